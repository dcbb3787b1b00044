// The page against an API that needs a key, in headless Chromium (as page_flow.mjs).
//
//   node tests/browser/page_key_flow.mjs <api_url> <key> <question> <screenshot.png>
//
// 1. Asks without a key: the page must say it needs one (401).
// 2. Types the key, asks again: POST /jobs carries it as a header, the
//    event stream as ?api_key= (EventSource cannot send headers); the
//    answer must stream in and the result show.
// 3. Reloads: the key must still be in its field (localStorage).
// Prints one JSON object on stdout; the caller judges it.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const [apiUrl, key, question, screenshot] = process.argv.slice(2);
if (!apiUrl || !key || !question || !screenshot) {
  console.error('usage: node page_key_flow.mjs <api_url> <key> <question> <screenshot.png>');
  process.exit(2);
}

async function settle(page) {
  await page.waitForFunction(
    () => {
      const state = document.body.dataset.state;
      const problem = !document.getElementById('problem').hidden;
      return state === 'done' || state === 'failed' || (state === 'idle' && problem);
    },
    null,
    { timeout: 60_000 },
  );
  return page.evaluate(() => ({
    state: document.body.dataset.state,
    problem: document.getElementById('problem').hidden ? null : document.getElementById('problem-title').textContent,
    status: document.getElementById('final-status').textContent,
    answer: document.getElementById('final-answer').textContent,
    job_id: document.getElementById('job-id').textContent,
  }));
}

const profile = await mkdtemp(join(tmpdir(), 'page-key-'));
const report = { requests: [] };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The same flags as page_flow.mjs: root in a container, no network beyond loopback.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1100, height: 900 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.pathname.startsWith('/jobs')) {
      report.requests.push({
        method: request.method(),
        path: url.pathname,
        query_key: url.searchParams.get('api_key') === key,
        header_key: request.headers().authorization === `Bearer ${key}`,
      });
    }
  });
  await page.goto(apiUrl);

  await page.fill('#question', question);
  await page.click('#submit');
  report.without_key = await settle(page);

  await page.fill('#api-key', key);
  await page.fill('#question', question);
  await page.click('#submit');
  report.with_key = await settle(page);
  await page.screenshot({ path: screenshot, fullPage: true });

  await page.reload();
  report.key_after_reload = (await page.inputValue('#api-key')) === key;
} catch (err) {
  report.exception = String((err && err.stack) || err);
} finally {
  if (context) await context.close();
  await rm(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
