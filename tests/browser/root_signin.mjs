// The portal through the root, in a real browser (browser.mjs has the common part). Run by
// tests/tests/silos.rs, twice, with the root and silo A on two host names that Chromium maps to
// loopback (`hosts`), so that each keeps its own session cookie as two real hosts would:
//
//   node root_signin.mjs '{"step":"root", "root":…, "silo":…, "username":…, "password":…,
//                          "machine":…, "hidden":…, "state":…, "hosts":…, "screens":…}'
//     signs in at the root's portal, opens silo A's portal from the machines page, sees
//     `machine` there and not `hidden`, opens the machine's page, is sent back to the root for
//     the profile; keeps the browser's cookies in `state`; prints the sign-in link it followed
//     ("ok: handoff URL");
//   node root_signin.mjs '{"step":"silo", "silo":…, "machine":…, "state":…, "handoff":…, "hosts":…, "screens":…}'
//     (the root stopped) with the cookies kept, still sees the machine on silo A; in a browser
//     without them, the same sign-in link is refused as used, and a tampered one as unsigned.

import { args, fail, run, start } from './browser.mjs';

const session = await start({
  extraArgs: [`--host-resolver-rules=${args.hosts}`],
  storageState: args.step === 'silo' ? args.state : undefined,
});
const { context, page, screenshot, expectText, expectNoText } = session;

async function rootStep() {
  let handoff;
  page.on('request', (request) => {
    if (request.url().includes('/portal/root-signin')) handoff = request.url();
  });
  await page.goto(`${args.root}/portal/signin`);
  await page.fill('#username', args.username);
  await page.fill('#password', args.password);
  await Promise.all([page.waitForURL(`${args.root}/portal/machines`), page.click('button:has-text("Sign in")')]);
  await expectText('Maintenance silos', "the root's machines page offers the silo");
  await screenshot('root-machines');
  console.log('ok: signed in at the root');

  await Promise.all([page.waitForURL(`${args.silo}/portal/machines`), page.click('button:has-text("Open silo-a")')]);
  await expectText('Signed in through the root', "silo A's portal");
  await expectText(args.machine, "the subscriber's PC on silo A");
  await expectNoText(args.hidden, "another subscriber's PC on silo A");
  await expectText("the root's portal", 'silo A links the root for the account');
  await screenshot('silo-machines');
  console.log(`ok: on silo A, sees ${args.machine} and not ${args.hidden}`);

  await Promise.all([page.waitForURL(`**/portal/machines/${args.machine}`), page.click(`a[href="/portal/machines/${args.machine}"]`)]);
  await expectText('Support parameters', "the PC's reports on silo A");
  await screenshot('silo-machine');
  console.log("ok: the PC's page on silo A");

  const hidden = await page.goto(`${args.silo}/portal/machines/${args.hidden}`);
  if (hidden.status() !== 403) fail(`another subscriber's PC answered ${hidden.status()}, not 403`);
  const profile = await page.goto(`${args.silo}/portal/profile`);
  await expectText('At the root', 'the profile is at the root');
  if (profile.status() !== 403) fail(`the profile on silo A answered ${profile.status()}, not 403`);
  await screenshot('silo-profile');
  console.log("ok: another subscriber's PC refused, the profile sent to the root");

  if (!handoff) fail('no request went to /portal/root-signin');
  await context.storageState({ path: args.state });
  console.log(`ok: handoff ${handoff}`);
}

async function siloStep() {
  await page.goto(`${args.silo}/portal/machines`);
  await expectText(args.machine, 'the PC on silo A, the root stopped');
  await screenshot('silo-machines-root-stopped');
  console.log('ok: still signed in on silo A with the root stopped');

  const fresh = await session.browser.newContext({ ignoreHTTPSErrors: true });
  const other = await fresh.newPage();
  await other.goto(args.handoff);
  let body = await other.innerText('body');
  if (!body.includes('used already')) fail(`the sign-in link was taken twice:\n${body.slice(0, 1500)}`);
  console.log('ok: the sign-in link is refused the second time');

  const url = new URL(args.handoff);
  const assertion = url.searchParams.get('assertion');
  const flipped = assertion.slice(0, 10) + (assertion[10] === 'A' ? 'B' : 'A') + assertion.slice(11);
  url.searchParams.set('assertion', flipped);
  await other.goto(url.toString());
  body = await other.innerText('body');
  if (!body.includes("not signed by this silo's root")) fail(`a tampered sign-in link was not refused:\n${body.slice(0, 1500)}`);
  console.log('ok: a tampered sign-in link is refused');
}

await run(session, { root: rootStep, silo: siloStep });
