// The portal in a real browser: headless Debian Chromium driven by npm `playwright-core`
// (scripts/install-test-deps.sh installs both). Run by tests/tests/portal_browser.rs, twice:
//
//   node invite_flow.mjs '{"step":"owner", "url":…, "username":…, "password":…, "invite":…, "screens":…}'
//     the subscriber signs in, opens the contacts page from the machines page, invites the
//     address and sees it listed as invited, then signs out;
//   node invite_flow.mjs '{"step":"contact", "link":…, "username":…, "password":…, "machine":…, "screens":…}'
//     the contact opens the accept link from the mail, creates an account on the invitation
//     page, accepts the terms and sees the subscriber's machine (by its nickname).
//
// Playwright is loaded from $TETHER_PLAYWRIGHT_DIR/node_modules. A screenshot of every page goes
// into `screens`. Any failure exits 1 with a line starting "FAILED:"; each step done prints a
// line starting "ok:".

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const fail = (message) => {
  console.error(`FAILED: ${message}`);
  process.exit(1);
};

let args;
try {
  args = JSON.parse(process.argv[2] ?? '');
} catch (e) {
  fail(`the first argument must be the step as JSON (${e.message})`);
}
const dir = process.env.TETHER_PLAYWRIGHT_DIR;
if (!dir) fail('TETHER_PLAYWRIGHT_DIR is not set (scripts/install-test-deps.sh installs playwright-core)');
let chromium;
try {
  ({ chromium } = createRequire(join(dir, 'package.json'))('playwright-core'));
} catch (e) {
  fail(`playwright-core is not installed in ${dir}: run scripts/install-test-deps.sh (${e.message})`);
}
mkdirSync(args.screens, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.TETHER_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});
// The gateway's certificate is signed by its own CA, which this throwaway browser does not trust.
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 800 } });
context.setDefaultTimeout(15000);
const page = await context.newPage();

let shot = 0;
async function screenshot(name) {
  shot += 1;
  await page.screenshot({ path: join(args.screens, `${args.step}-${shot}-${name}.png`), fullPage: true });
}

/** Fails unless the page's visible text holds `text`. */
async function expectText(text, what) {
  const body = await page.innerText('body');
  if (!body.includes(text)) fail(`${what}: "${text}" is not on ${page.url()}:\n${body.slice(0, 1500)}`);
}

async function ownerStep() {
  await page.goto(`${args.url}/portal/signin`);
  await screenshot('signin');
  await page.fill('#username', args.username);
  await page.fill('#password', args.password);
  await Promise.all([page.waitForURL('**/portal/machines'), page.click('button:has-text("Sign in")')]);
  await expectText('Your support contacts', 'the machines page links the contacts page');
  await screenshot('machines');
  console.log('ok: signed in as the subscriber');
  await Promise.all([page.waitForURL('**/contacts'), page.click('a:has-text("Your support contacts")')]);
  await expectText('Invite a support contact', 'the contacts page');
  await screenshot('contacts');
  await page.fill('#email', args.invite);
  await Promise.all([page.waitForLoadState('load'), page.click('button:has-text("Invite")')]);
  await expectText(args.invite, 'the new invitation is listed');
  await expectText('invited', 'the new invitation is listed as invited');
  await screenshot('invited');
  console.log(`ok: invited ${args.invite}`);
  await Promise.all([page.waitForURL('**/portal/signin'), page.click('button:has-text("Sign out")')]);
  console.log('ok: signed out');
}

async function contactStep() {
  await page.goto(args.link);
  await expectText('invites', 'the invitation page says who invites');
  await expectText('Create the account', 'the invitation page offers an account');
  await screenshot('invitation');
  await page.fill('#username', args.username);
  await page.fill('#password', args.password);
  await page.fill('#password2', args.password);
  await Promise.all([page.waitForLoadState('load'), page.click('button:has-text("Create the account")')]);
  await expectText(`Signed in as ${args.username}`, 'the new account is signed in');
  await screenshot('terms');
  console.log(`ok: created the account ${args.username}`);
  await page.check('input[name="accept_terms"]');
  await page.fill('#nickname', args.nickname ?? args.username);
  await Promise.all([page.waitForURL('**/portal/machines'), page.click('button:has-text("Accept the invitation")')]);
  await expectText(args.machine, "the subscriber's machine is listed");
  await screenshot('machines');
  console.log(`ok: accepted, and sees the machine ${args.machine}`);
}

try {
  if (args.step === 'owner') await ownerStep();
  else if (args.step === 'contact') await contactStep();
  else fail(`unknown step ${JSON.stringify(args.step)}`);
} catch (e) {
  await screenshot('failure').catch(() => {});
  fail(`${args.step}: ${e.message}`);
} finally {
  await browser.close();
}
