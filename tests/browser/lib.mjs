// What every browser flow shares: Debian's headless Chromium through
// playwright-core, the page's errors collected, and readers of what the page
// shows. Functions handed to page.evaluate() must be self-contained: they run
// in the page, not here.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Root in a container, no network beyond loopback.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// page.png -> page-<name>.png
export const sibling = (path, name) => path.replace(/(\.png)?$/, `-${name}.png`);

// Runs `flow(page, report)` in a fresh browser profile and prints the report
// as one JSON line on stdout, whatever happened: the caller judges it.
export async function runFlow(name, report, flow) {
  const profile = await mkdtemp(join(tmpdir(), `${name}-`));
  Object.assign(report, { console_errors: [], page_errors: [], failed_requests: [] });
  let context;
  let page;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1100, height: 900 },
      deviceScaleFactor: 1,
      acceptDownloads: true,
    });
    report.browser_version = context.browser()?.version() ?? null;
    await context.addInitScript(pageReaders);
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (msg) => {
      if (msg.type() === 'error') report.console_errors.push(msg.text());
    });
    page.on('pageerror', (err) => report.page_errors.push(String(err)));
    page.on('requestfailed', (req) => {
      // The page closes event streams itself after their terminal event.
      const reason = req.failure()?.errorText ?? '';
      if (!(req.url().includes('/events') && reason.includes('ERR_ABORTED'))) {
        report.failed_requests.push(`${req.method()} ${req.url()}: ${reason}`);
      }
    });
    await flow(page, report);
  } catch (err) {
    report.exception = String(err && err.stack ? err.stack : err);
    // What the page said when the flow gave up, to see why.
    report.page_text_at_exception = await page?.evaluate(() => document.body.innerText).catch(() => null);
  } finally {
    await context?.close().catch(() => {});
    await rm(profile, { recursive: true, force: true }).catch(() => {});
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

// The page has its programs and a form for the chosen one.
export async function openPage(page, apiUrl) {
  const response = await page.goto(`${apiUrl}/`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.body.dataset.state !== 'loading');
  return response?.status() ?? null;
}

// The form and the batch format are rebuilt as the choice changes.
export async function pickProgram(page, name) {
  await page.selectOption('#program', name);
  await page.waitForFunction((wanted) => document.getElementById('program').value === wanted, name);
}

// Fills the generated form: text is typed, a select gets the option with
// that label, a checkbox is set to the boolean.
export async function fillForm(page, fields) {
  for (const [name, value] of Object.entries(fields)) {
    const selector = `#in-${name}`;
    const kind = await page.$eval(selector, (node) => (node.type === 'checkbox' ? 'checkbox' : node.tagName.toLowerCase()));
    if (kind === 'checkbox') await page.setChecked(selector, Boolean(value));
    else if (kind === 'select') await page.selectOption(selector, { label: String(value) });
    else await page.fill(selector, String(value));
  }
}

// Done with a submission: a result, a failed job, or a refusal.
export function settled(seen) {
  return seen.state === 'done' || seen.state === 'failed' || (seen.state === 'idle' && seen.problem_shown);
}

export async function waitSettled(page, timeoutMs = 60_000) {
  await page.waitForFunction(
    () => {
      const state = document.body.dataset.state;
      const problem = !document.getElementById('problem').hidden;
      return state === 'done' || state === 'failed' || (state === 'idle' && problem);
    },
    null,
    { timeout: timeoutMs },
  );
}

// Readers of what the page shows, installed in the page before its own
// script on every load (so a flow calls `window.flowRead.job()` and so on).
// Self-contained: this function's source runs in the page.
function pageReaders() {
  const text = (id) => document.getElementById(id)?.textContent ?? null;
  const shown = (id) => {
    const node = document.getElementById(id);
    return Boolean(node) && !node.hidden;
  };

  // A value as app.js's renderValue shows it: its type and text, a list's
  // items, an object's rows.
  const value = (container) => {
    const node = container?.firstElementChild ?? null;
    if (!node) return null;
    const type = node.dataset.type ?? null;
    const read = { type, text: node.textContent };
    if (type === 'list') read.items = [...node.children].map((li) => li.textContent);
    if (type === 'object') {
      read.rows = Object.fromEntries(
        [...node.querySelectorAll(':scope > tbody > tr')].map((tr) => [tr.dataset.key, tr.querySelector('td').textContent]),
      );
    }
    return read;
  };

  const form = () =>
    [...document.querySelectorAll('#input-fields .field')].map((field) => {
      const control = field.querySelector('input, textarea, select');
      return {
        name: field.dataset.field,
        kind: field.dataset.kind,
        control: control.tagName === 'INPUT' ? `input:${control.type}` : control.tagName.toLowerCase(),
        type: field.querySelector('.type')?.textContent ?? null,
        required: Boolean(field.querySelector('.req')),
        description: field.querySelector('.desc')?.textContent ?? null,
        options: control.tagName === 'SELECT' ? [...control.options].map((o) => o.textContent) : null,
      };
    });

  const panels = () =>
    Object.fromEntries(
      [...document.querySelectorAll('#panels .panel')].map((panel) => [
        panel.dataset.field,
        {
          kind: panel.dataset.kind,
          title: panel.querySelector('h2').firstChild?.textContent ?? null,
          type: panel.querySelector('h2 .type')?.textContent ?? null,
          stream: panel.querySelector('.stream').textContent,
          value: panel.querySelector('.value').hidden ? null : value(panel.querySelector('.value')),
        },
      ]),
    );

  // The job view, sampled often while it streams: keep it cheap.
  const sample = () => ({
    state: document.body.dataset.state ?? null,
    status: text('status'),
    stream: Object.fromEntries(
      [...document.querySelectorAll('#panels .panel')].map((p) => [p.dataset.field, p.querySelector('.stream').textContent]),
    ),
    final_shown: shown('final'),
    problem_shown: shown('problem'),
  });

  const job = () => ({
    state: document.body.dataset.state,
    program: document.getElementById('program').value,
    programs: [...document.getElementById('program').options].map((o) => ({ name: o.value, text: o.textContent, disabled: o.disabled })),
    form: form(),
    field_errors: Object.fromEntries(
      [...document.querySelectorAll('.field-error')].filter((e) => !e.hidden).map((e) => [e.id.replace(/^err-/, ''), e.textContent]),
    ),
    problem: shown('problem') ? { title: text('problem-title'), message: text('problem-message') } : null,
    job_shown: shown('job'),
    job_id: text('job-id'),
    status: text('status'),
    final_shown: shown('final'),
    final: {
      status: text('final-status'),
      program: text('final-program'),
      usage: text('final-usage'),
      elapsed: text('final-elapsed'),
      attempts: text('final-attempts'),
      temperature: text('final-temperature'),
    },
    panels: panels(),
  });

  const progress = () => {
    const bar = document.getElementById('batch-progress');
    return {
      status: text('batch-status'),
      percent: Number(bar.dataset.percent),
      aria_valuenow: Number(bar.getAttribute('aria-valuenow')),
      finished: Number(bar.dataset.finished),
      total: Number(bar.dataset.total),
      percent_text: text('batch-percent'),
      counts_text: text('batch-counts'),
      cancel_shown: shown('batch-cancel'),
      retry_shown: shown('batch-retry'),
      note: text('batch-note'),
    };
  };

  // The results table as shown: one object per row, a cell per column.
  const results = () => ({
    range: text('results-range'),
    columns: [...document.querySelectorAll('#results-table thead th')].map((th) => th.textContent),
    next_enabled: !document.getElementById('results-next').disabled,
    prev_enabled: !document.getElementById('results-prev').disabled,
    rows: [...document.querySelectorAll('#results-table > tbody > tr')].map((tr) => ({
      index: Number(tr.dataset.index),
      status: tr.dataset.status,
      cells: Object.fromEntries([...tr.cells].map((td) => [td.dataset.col, { text: td.textContent, value: value(td) }])),
    })),
  });

  const batchForm = () => ({
    parsed: shown('batch-parsed') ? text('batch-parsed') : null,
    errors: shown('batch-errors') ? [...document.querySelectorAll('#batch-errors li')].map((li) => li.textContent) : [],
    format: text('batch-format'),
    submit_enabled: !document.getElementById('batch-submit').disabled,
    problem: shown('problem') ? { title: text('problem-title'), message: text('problem-message') } : null,
    batch_id: text('batch-id'),
  });

  window.flowRead = { sample, job, progress, results, batchForm };
}

export const read = {
  sample: (page) => page.evaluate(() => window.flowRead.sample()),
  job: (page) => page.evaluate(() => window.flowRead.job()),
  progress: (page) => page.evaluate(() => window.flowRead.progress()),
  results: (page) => page.evaluate(() => window.flowRead.results()),
  batchForm: (page) => page.evaluate(() => window.flowRead.batchForm()),
};
