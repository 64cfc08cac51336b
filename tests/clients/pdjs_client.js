// PagerDuty's JavaScript client library (@pagerduty/pdjs, HTTPS only) against pdrelay's local
// Events API endpoint. Usage: node pdjs_client.js HOST:PORT ROUTING_KEY
// A trigger with images, links and a timestamp (Date.toISOString()), its acknowledge and resolve,
// and a change event with images and links. Prints one JSON object: each call's status and
// answer, and the timestamp sent; exits 1 on a failed call.
const { trigger, acknowledge, resolve, change } = require('@pagerduty/pdjs');

const [server, key] = process.argv.slice(2);
const images = [{ src: 'https://graphs.example/disk.png', href: 'https://graphs.example/disk', alt: 'disk' }];
const links = [{ href: 'https://runbook.example/disk', text: 'runbook' }];

async function main() {
  const timestamp = new Date().toISOString();
  const out = { timestamp };
  const call = async (name, f, data) => {
    const r = await f({ server, data: { routing_key: key, ...data } });
    out[name] = { status: r.status, data: r.data };
    if (r.status !== 202) throw new Error(`${name}: ${r.status} ${JSON.stringify(r.data)}`);
  };
  await call('trigger', trigger, {
    dedup_key: 'pdjs/disk',
    payload: { summary: 'Disk full on web3', source: 'web3', severity: 'critical', timestamp, custom_details: { free: '3%' } },
    images,
    links,
  });
  await call('acknowledge', acknowledge, { dedup_key: 'pdjs/disk' });
  await call('resolve', resolve, { dedup_key: 'pdjs/disk' });
  await call('change', change, { payload: { summary: 'pdjs change', source: 'ci', timestamp }, images, links });
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
