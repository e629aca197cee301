// Searches models and reads collections through the official npm client.
// Usage: node search.mjs <api base url> <token> <query>; prints one JSON line.
import Replicate from "replicate";

const [baseUrl, token, query] = process.argv.slice(2);
const replicate = new Replicate({ auth: token, baseUrl: `${baseUrl}/v1` });

const found = await replicate.models.search(query);
const collections = await replicate.collections.list();
const builtin = await replicate.collections.get("built-in");

console.log(
  JSON.stringify({
    found: found.results.map((m) => `${m.owner}/${m.name}`),
    slugs: collections.results.map((c) => c.slug),
    builtin: builtin.models.map((m) => `${m.owner}/${m.name}`),
  }),
);
