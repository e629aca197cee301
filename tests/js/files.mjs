// Runs replicant/thumbnail through the official npm client with a Buffer and a Blob as the
// image (the client uploads them through the Files API) and reads the FileOutput streams.
// Usage: node files.mjs <api base url> <token> <png path>; prints one JSON line.
import { readFile } from "node:fs/promises";
import Replicate from "replicate";

const [baseUrl, token, imagePath] = process.argv.slice(2);
const replicate = new Replicate({ auth: token, baseUrl: `${baseUrl}/v1` });
const image = await readFile(imagePath);

async function describe(output) {
  const bytes = Buffer.from(await (await output.blob()).arrayBuffer());
  return {
    isReadableStream: output instanceof ReadableStream,
    url: output.url().toString(),
    size: bytes.length,
    base64: bytes.toString("base64"),
  };
}

const fromBuffer = await replicate.run("replicant/thumbnail", {
  input: { image, width: 8 },
});
const fromBlob = await replicate.run("replicant/thumbnail", {
  input: { image: new Blob([image], { type: "image/png" }), width: 4 },
});
const files = await replicate.files.list();

console.log(
  JSON.stringify({
    buffer: await describe(fromBuffer),
    blob: await describe(fromBlob),
    uploaded: files.results.map((f) => ({ name: f.name, size: f.size })),
  }),
);
