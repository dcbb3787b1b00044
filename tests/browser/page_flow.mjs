// Drives the API's page in headless Chromium (Debian's, through playwright-core)
// as a person would, and prints what it saw as one JSON object on stdout.
//
//   node tests/browser/page_flow.mjs <api_url> <screenshot.png> [question]
//
// 1. Asks `question` (it should stream slowly, e.g. with `[lm:tps=30]`) with a
//    temperature, and samples the reasoning and answer panels every 50 ms
//    until the result shows; screenshot at <screenshot.png>, and one taken
//    mid-stream at <screenshot>-streaming.png.
// 2. Asks a question the scripted LM answers with garbage: the job's error
//    must show (screenshot <screenshot>-failed.png).
// 3. Asks a question over the length limit: the 422 message must show
//    (screenshot <screenshot>-rejected.png).
//
// Exit code 0 whenever it could report; the caller judges the report.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const POLL_MS = 50;
const FLOW_TIMEOUT_MS = 60_000;

const [apiUrl, screenshot, question = `Why is the sky blue? [lm:tps=30] (${Date.now()})`] = process.argv.slice(2);
if (!apiUrl || !screenshot) {
  console.error('usage: node page_flow.mjs <api_url> <screenshot.png> [question]');
  process.exit(2);
}

// page.png -> page-<name>.png
const sibling = (path, name) => path.replace(/(\.png)?$/, `-${name}.png`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Everything the page shows, read in one round trip.
function readPage() {
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  const shown = (id) => {
    const el = document.getElementById(id);
    return Boolean(el) && !el.hidden;
  };
  return {
    state: document.body.dataset.state ?? null,
    status: text('status'),
    reasoning: text('field-reasoning'),
    answer: text('field-answer'),
    key_concepts: text('field-key_concepts'),
    question_type: text('field-question_type'),
    final_shown: shown('final'),
    problem_shown: shown('problem'),
  };
}

function readFinal() {
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  return {
    job_id: text('job-id'),
    status: text('final-status'),
    answer: text('final-answer'),
    key_concepts: [...document.querySelectorAll('#final-key-concepts li')].map((li) => li.textContent),
    question_type: text('final-question-type'),
    usage: text('final-usage'),
    elapsed: text('final-elapsed'),
    attempts: text('final-attempts'),
    temperature: text('final-temperature'),
    panels: Object.fromEntries(
      [...document.querySelectorAll('.panel')].map((p) => [p.dataset.field, p.querySelector('.stream').textContent]),
    ),
  };
}

function readProblem() {
  return {
    shown: !document.getElementById('problem').hidden,
    title: document.getElementById('problem-title').textContent,
    message: document.getElementById('problem-message').textContent,
    status: document.getElementById('status').textContent,
    job_shown: !document.getElementById('job').hidden,
  };
}

async function ask(page, text, temperature = '') {
  await page.fill('#question', text);
  await page.fill('#temperature', temperature);
  await page.click('#submit');
}

// The page is done with a question: a result, a failed job, or a refusal.
function settled(seen) {
  return seen.state === 'done' || seen.state === 'failed' || (seen.state === 'idle' && seen.problem_shown);
}

// Waits for the page to settle, sampling it as it goes.
// `midway`, if given, is called once mid-stream, after the answer (so that
// the time it takes does not cut the samples of reasoning and answer).
async function follow(page, midway = null) {
  const started = Date.now();
  const samples = [];
  for (;;) {
    const seen = await page.evaluate(readPage);
    samples.push({ t_ms: Date.now() - started, ...seen });
    if (midway && seen.state === 'streaming' && seen.key_concepts) {
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
  const answers = distinctNonEmpty(before.map((s) => s.answer));
  const reasonings = distinctNonEmpty(before.map((s) => s.reasoning));
  const firstToken = before.find((s) => s.reasoning || s.answer);
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

const userDataDir = await mkdtemp(join(tmpdir(), 'page-flow-'));
const report = { api_url: apiUrl, question, console_errors: [], page_errors: [], failed_requests: [] };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
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
    deviceScaleFactor: 1,
  });
  report.browser_version = context.browser()?.version() ?? null;
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => {
    if (msg.type() === 'error') report.console_errors.push(msg.text());
  });
  page.on('pageerror', (err) => report.page_errors.push(String(err)));
  page.on('requestfailed', (req) => {
    // The page closes the event stream itself after the terminal event.
    const reason = req.failure()?.errorText ?? '';
    if (!(req.url().includes('/events') && reason.includes('ERR_ABORTED'))) {
      report.failed_requests.push(`${req.method()} ${req.url()}: ${reason}`);
    }
  });

  const response = await page.goto(`${apiUrl}/`, { waitUntil: 'load' });
  report.page_status = response?.status() ?? null;
  report.title = await page.title();

  // 1. The happy path, token by token.
  await ask(page, question, '0.3');
  const flow = await follow(page, () => page.screenshot({ path: sibling(screenshot, 'streaming'), fullPage: true }));
  report.timed_out = flow.timed_out;
  report.stream = summarize(flow.samples);
  report.final = await page.evaluate(readFinal);
  report.problem_after_success = await page.evaluate(readProblem);
  await page.screenshot({ path: screenshot, fullPage: true });

  // 2. A job that fails: its error shows, and the page is usable again.
  await ask(page, `Please fail. [lm:garbage] (${Date.now()})`);
  const failed = await follow(page);
  report.failed = { timed_out: failed.timed_out, ...(await page.evaluate(readProblem)) };
  report.failed.final_shown = await page.evaluate(() => !document.getElementById('final').hidden);
  await page.screenshot({ path: sibling(screenshot, 'failed'), fullPage: true });

  // 3. A question the API refuses (422): its message shows.
  await ask(page, 'x'.repeat(4001));
  const rejected = await follow(page);
  report.rejected = { timed_out: rejected.timed_out, ...(await page.evaluate(readProblem)) };
  report.submit_enabled_after = await page.isEnabled('#submit');
  await page.screenshot({ path: sibling(screenshot, 'rejected'), fullPage: true });
} catch (err) {
  report.exception = String(err && err.stack ? err.stack : err);
} finally {
  await context?.close().catch(() => {});
  await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
}

process.stdout.write(`${JSON.stringify(report)}\n`);
