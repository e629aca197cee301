// Streams a prediction with the official npm client; prints one JSON line per event.
// usage: node stream.mjs <base_url> <token> <model> <input-json>
import Replicate from "replicate";

const [baseUrl, token, model, input] = process.argv.slice(2);
const replicate = new Replicate({ auth: token, baseUrl: `${baseUrl}/v1` });
for await (const event of replicate.stream(model, { input: JSON.parse(input) })) {
  console.log(JSON.stringify({ event: event.event, data: event.data, id: event.id }));
}
