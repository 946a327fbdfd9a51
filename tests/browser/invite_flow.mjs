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
// The browser, screenshots of every page into `screens` and failing ("FAILED: …", exit 1) are
// browser.mjs's; each thing done prints a line starting "ok:".

import { args, run, start } from './browser.mjs';

const session = await start();
const { page, screenshot, expectText } = session;

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

await run(session, { owner: ownerStep, contact: contactStep });
