// Drives the API's page in headless Chromium (Debian's, through playwright-core)
// as a person would, and prints what it saw as one JSON object on stdout.
//
//   node tests/browser/page_flow.mjs <api_url> <screenshot.png> [question]
//
// 1. Asks `question` of the default program (`qa`, its form built from its
//    input schema; it should stream slowly, e.g. with `[lm:tps=30]`) with a
//    temperature, and samples the output panels every 50 ms until the
//    result shows; screenshot at <screenshot.png>, and one taken mid-stream
//    at <screenshot>-streaming.png.
// 2. Asks a question the scripted LM answers with garbage: the job's error
//    must show (screenshot <screenshot>-failed.png).
// 3. Asks a question over the length limit: the 422 message must show, in
//    the problem box and next to the field (screenshot <screenshot>-rejected.png).
//
// Exit code 0 whenever it could report; the caller judges the report.

import { fillForm, openPage, read, runFlow, settled, sibling, sleep } from './lib.mjs';

const POLL_MS = 50;
const FLOW_TIMEOUT_MS = 60_000;

const [apiUrl, screenshot, question = `Why is the sky blue? [lm:tps=30] (${Date.now()})`] = process.argv.slice(2);
if (!apiUrl || !screenshot) {
  console.error('usage: node page_flow.mjs <api_url> <screenshot.png> [question]');
  process.exit(2);
}

async function ask(page, text, temperature = '') {
  await fillForm(page, { question: text });
  await page.fill('#temperature', temperature);
  await page.click('#submit');
}

// Waits for the page to settle, sampling it as it goes.
// `midway`, if given, is called once mid-stream, after the answer (so that
// the time it takes does not cut the samples of reasoning and answer).
async function follow(page, midway = null) {
  const started = Date.now();
  const samples = [];
  for (;;) {
    const seen = await read.sample(page);
    samples.push({ t_ms: Date.now() - started, ...seen });
    if (midway && seen.state === 'streaming' && seen.stream.key_concepts) {
      await midway();
      midway = null;
    }
    if (settled(seen)) return { samples, timed_out: false };
    if (Date.now() - started > FLOW_TIMEOUT_MS) return { samples, timed_out: true };
    await sleep(POLL_MS);
  }
}

function distinctNonEmpty(values) {
  return [...new Set(values.filter((v) => v))];
}

// Each distinct text extends the one before it: the field grows token by token.
function grows(texts) {
  return texts.every((text, i) => i === 0 || text.startsWith(texts[i - 1]));
}

function summarize(samples) {
  const before = samples.filter((s) => !settled(s));
  const answers = distinctNonEmpty(before.map((s) => s.stream.answer));
  const reasonings = distinctNonEmpty(before.map((s) => s.stream.reasoning));
  const firstToken = before.find((s) => s.stream.reasoning || s.stream.answer);
  return {
    samples: samples.length,
    samples_before_final: before.length,
    statuses_seen: distinctNonEmpty(before.map((s) => s.status)),
    distinct_answer_texts: answers.length,
    distinct_reasoning_texts: reasonings.length,
    answer_texts_grow: grows(answers),
    reasoning_texts_grow: grows(reasonings),
    answer_texts: answers,
    reasoning_texts: reasonings,
    first_token_ms: firstToken ? firstToken.t_ms : null,
    final_ms: samples.at(-1).t_ms,
  };
}

const report = { api_url: apiUrl, question };
await runFlow('page-flow', report, async (page) => {
  report.page_status = await openPage(page, apiUrl);
  report.title = await page.title();
  report.loaded = await read.job(page);

  // 1. The happy path, token by token.
  await ask(page, question, '0.3');
  const flow = await follow(page, () => page.screenshot({ path: sibling(screenshot, 'streaming'), fullPage: true }));
  report.timed_out = flow.timed_out;
  report.stream = summarize(flow.samples);
  report.done = await read.job(page);
  await page.screenshot({ path: screenshot, fullPage: true });

  // 2. A job that fails: its error shows, and the page is usable again.
  await ask(page, `Please fail. [lm:garbage] (${Date.now()})`);
  const failed = await follow(page);
  report.failed = { timed_out: failed.timed_out, ...(await read.job(page)) };
  await page.screenshot({ path: sibling(screenshot, 'failed'), fullPage: true });

  // 3. A question the API refuses (422): its message shows.
  await ask(page, 'x'.repeat(4001));
  const rejected = await follow(page);
  report.rejected = { timed_out: rejected.timed_out, ...(await read.job(page)) };
  report.submit_enabled_after = await page.isEnabled('#submit');
  await page.screenshot({ path: sibling(screenshot, 'rejected'), fullPage: true });
});
