// Drives deployments with the official npm client; prints one JSON object with what it saw.
// usage: node deployments.mjs <base_url> <token> <owner> <name> <model> <version>
//            <sync_input_json> <async_input_json>
import Replicate from "replicate";

const [baseUrl, token, owner, name, model, version, syncInput, asyncInput] =
  process.argv.slice(2);
const replicate = new Replicate({ auth: token, baseUrl: `${baseUrl}/v1` });

const created = await replicate.deployments.create({
  name, model, version, hardware: "cpu", min_instances: 0, max_instances: 1,
});
const updated = await replicate.deployments.update(owner, name, { max_instances: 2 });
const fetched = await replicate.deployments.get(owner, name);
const sync = await replicate.deployments.predictions.create(owner, name, {
  input: JSON.parse(syncInput), wait: true,
});
let queued = await replicate.deployments.predictions.create(owner, name, {
  input: JSON.parse(asyncInput),
});
const queuedStatus = queued.status;
queued = await replicate.wait(queued, { interval: 100 });
console.log(JSON.stringify({
  created: created.current_release.number,
  updated: updated.current_release.number,
  fetched: fetched.current_release.configuration.max_instances,
  sync: { status: sync.status, output: sync.output, deployment: sync.deployment },
  queued: { first: queuedStatus, status: queued.status, output: queued.output },
}));
