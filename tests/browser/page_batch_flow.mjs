// A batch from an uploaded file, in headless Chromium (as page_flow.mjs).
//
//   node tests/browser/page_batch_flow.mjs <api_url> <screenshot.png> <plan.json>
//
// plan.json: {"program": "triage", "file": "<items.jsonl|.csv>", "download": "<where to save the NDJSON>",
//             "cancel": false, "parse_only": false, "retry": false}
// 1. Picks the program, opens the Batch tab, chooses the file: records what
//    the page read from it (screenshot <screenshot>-parsed.png).
//    With "parse_only", stops there.
// 2. Runs it (with "cancel", clicks Cancel as soon as it shows) and samples
//    the progress bar every 100 ms until the batch ends (a screenshot
//    mid-way, <screenshot>-progress.png, if the bar is seen between 0 and
//    100 %).
// 3. Reads the results table page by page with Next (screenshot of the
//    first page at <screenshot>.png, of the first page with a failed item at
//    <screenshot>-failures.png), goes back one page with Previous.
// 4. Downloads the NDJSON to "download".
// 5. With "retry": shows the failed items only (screenshot <screenshot>-failed.png),
//    clicks "Retry failed" and follows the new batch until it ends.
// Prints one JSON object on stdout; the caller judges it.

import { readFile } from 'node:fs/promises';
import { openPage, pickProgram, read, runFlow, sibling, sleep } from './lib.mjs';

const [apiUrl, screenshot, planPath] = process.argv.slice(2);
if (!apiUrl || !screenshot || !planPath) {
  console.error('usage: node page_batch_flow.mjs <api_url> <screenshot.png> <plan.json>');
  process.exit(2);
}
const plan = JSON.parse(await readFile(planPath, 'utf8'));
const POLL_MS = 100;
const BATCH_TIMEOUT_MS = 150_000;
const TERMINAL_BATCH = ['completed', 'cancelled', 'failed', 'expired'];
const TERMINAL_ITEM = ['succeeded', 'failed', 'cancelled', 'expired'];

// The progress bar eases to its width: shoot it once it is there.
async function shoot(page, path) {
  await page.waitForFunction(() => !document.getAnimations().some((a) => a instanceof CSSTransition));
  await page.screenshot({ path, fullPage: true });
}

async function chooseFile(page) {
  await page.click('#tab-batch');
  await page.setInputFiles('#batch-file', plan.file);
  await page.waitForSelector('#batch-parsed:not([hidden]), #batch-errors:not([hidden])');
  return read.batchForm(page);
}

// Progress until the batch ends: every distinct state of the bar, in order.
async function followProgress(page) {
  const started = Date.now();
  const seen = [];
  let midway = false;
  for (;;) {
    const now = await read.progress(page);
    const last = seen.at(-1);
    if (!last || last.percent !== now.percent || last.status !== now.status || last.counts_text !== now.counts_text) {
      seen.push({ t_ms: Date.now() - started, ...now });
    }
    if (!midway && now.percent > 0 && now.percent < 100) {
      midway = true;
      await shoot(page, sibling(screenshot, 'progress'));
    }
    if (TERMINAL_BATCH.includes(now.status)) return { seen, timed_out: false, midway_shot: midway };
    if (Date.now() - started > BATCH_TIMEOUT_MS) return { seen, timed_out: true, midway_shot: midway };
    await sleep(POLL_MS);
  }
}

// The page reads the first page of results again once the batch has ended.
async function waitFinalPage(page) {
  await page.waitForFunction(
    (terminal) => {
      const rows = [...document.querySelectorAll('#results-table > tbody > tr')];
      return rows.length > 0 && rows.every((tr) => terminal.includes(tr.dataset.status))
        && document.getElementById('results-table').getAttribute('aria-busy') !== 'true';
    },
    TERMINAL_ITEM,
    { timeout: 30_000 },
  );
}

async function walkPages(page) {
  const pages = [];
  let failuresShot = false;
  for (;;) {
    const shown = await read.results(page);
    pages.push(shown);
    if (!failuresShot && shown.rows.some((row) => row.status === 'failed')) {
      failuresShot = true;
      await shoot(page, sibling(screenshot, 'failures'));
    }
    if (!shown.next_enabled) break;
    await page.click('#results-next');
    await page.waitForFunction((before) => document.getElementById('results-range').textContent !== before, shown.range);
  }
  let back = null;
  if (pages.length > 1) {
    const last = pages.at(-1).range;
    await page.click('#results-prev');
    await page.waitForFunction((before) => document.getElementById('results-range').textContent !== before, last);
    back = (await read.results(page)).range;
  }
  return { pages, back_to: back };
}

const report = { api_url: apiUrl, plan };
await runFlow('page-batch', report, async (page) => {
  report.page_status = await openPage(page, apiUrl);
  await pickProgram(page, plan.program);
  report.parsed = await chooseFile(page);
  await shoot(page, sibling(screenshot, 'parsed'));
  if (plan.parse_only) return;

  await page.click('#batch-submit');
  await page.waitForSelector('#batch:not([hidden]), #problem:not([hidden])');
  report.submitted = await read.batchForm(page);
  if (report.submitted.problem) return;
  if (plan.cancel) {
    await page.click('#batch-cancel');
  }
  report.progress = await followProgress(page);
  await waitFinalPage(page);
  report.final_progress = await read.progress(page);
  await shoot(page, screenshot);

  report.table = await walkPages(page);

  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#batch-download')]);
  report.download_name = download.suggestedFilename();
  await download.saveAs(plan.download);
  report.after = await read.batchForm(page);
  if (!plan.retry) return;

  const before = (await read.results(page)).range;
  await page.check('#results-failed');
  await page.waitForFunction((range) => document.getElementById('results-range').textContent !== range, before);
  report.failed_only = await read.results(page);
  await shoot(page, sibling(screenshot, 'failed'));
  const first = report.after.batch_id;
  await page.click('#batch-retry');
  await page.waitForFunction((id) => document.getElementById('batch-id').textContent !== id, first);
  report.retry = { batch_id: (await read.batchForm(page)).batch_id, progress: await followProgress(page) };
  report.retry.final = await read.progress(page);
});
