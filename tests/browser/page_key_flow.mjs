// The page against an API that needs a key, in headless Chromium (as page_flow.mjs).
//
//   node tests/browser/page_key_flow.mjs <api_url> <key> <question> <screenshot.png>
//
// 1. Opens the page without a key: loading the programs is refused, and the
//    page must say it needs one (401).
// 2. Types the key (Enter): the programs load; asks `question` of the default
//    program: POST carries the key as a header, the event stream as
//    ?api_key= (EventSource cannot send headers); the answer must stream in
//    and the result show.
// 3. Uploads a 3-item JSONL batch: submitted, followed (?api_key= again),
//    its results read and downloaded with the key as a header
//    (screenshot <screenshot>-batch.png).
// 4. Reloads: the key must still be in its field (localStorage).
// Prints one JSON object on stdout; the caller judges it.

import { readFile } from 'node:fs/promises';
import { fillForm, openPage, read, runFlow, waitSettled } from './lib.mjs';

const [apiUrl, key, question, screenshot] = process.argv.slice(2);
if (!apiUrl || !key || !question || !screenshot) {
  console.error('usage: node page_key_flow.mjs <api_url> <key> <question> <screenshot.png>');
  process.exit(2);
}
const TERMINAL_BATCH = ['completed', 'cancelled', 'failed', 'expired'];

async function settle(page) {
  await waitSettled(page);
  const seen = await read.job(page);
  return {
    state: seen.state,
    problem: seen.problem ? seen.problem.title : null,
    status: seen.final.status,
    answer: seen.panels.answer?.value?.text ?? null,
    job_id: seen.job_id,
  };
}

async function runBatch(page) {
  const lines = [0, 1, 2].map((i) => JSON.stringify({ custom_id: `k-${i}`, question: `${question} #${i}` }));
  await page.click('#tab-batch');
  await page.setInputFiles('#batch-file', {
    name: 'with-key.jsonl',
    mimeType: 'application/x-ndjson',
    buffer: Buffer.from(`${lines.join('\n')}\n`),
  });
  await page.waitForSelector('#batch-parsed:not([hidden])');
  await page.click('#batch-submit');
  await page.waitForFunction(
    (terminal) => terminal.includes(document.getElementById('batch-status').textContent)
      && !document.getElementById('batch').hidden,
    TERMINAL_BATCH,
    { timeout: 60_000 },
  );
  await page.waitForFunction(() => document.querySelectorAll('#results-table > tbody > tr').length === 3);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#batch-download')]);
  const downloaded = await readFile(await download.path(), 'utf8');
  const progress = await read.progress(page);
  const results = await read.results(page);
  return {
    status: progress.status,
    percent: progress.percent,
    rows: results.rows.map((row) => ({ custom_id: row.cells.custom_id.text, status: row.status })),
    download_lines: downloaded.trim().split('\n').length,
    problem: (await read.batchForm(page)).problem,
  };
}

const report = { requests: [] };
await runFlow('page-key', report, async (page) => {
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (/^\/(jobs|programs|batches)/.test(url.pathname)) {
      report.requests.push({
        method: request.method(),
        path: url.pathname,
        query_key: url.searchParams.get('api_key') === key,
        header_key: request.headers().authorization === `Bearer ${key}`,
      });
    }
  });
  await openPage(page, apiUrl);
  report.without_key = await settle(page);

  await page.fill('#api-key', key);
  await page.press('#api-key', 'Enter');
  await page.waitForSelector('#in-question');
  await fillForm(page, { question });
  await page.click('#submit');
  report.with_key = await settle(page);
  await page.screenshot({ path: screenshot, fullPage: true });

  report.batch = await runBatch(page);
  await page.screenshot({ path: screenshot.replace(/(\.png)?$/, '-batch.png'), fullPage: true });

  await page.reload();
  report.key_after_reload = (await page.inputValue('#api-key')) === key;
});
