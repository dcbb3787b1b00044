// One program's jobs from the form the page builds from its input schema,
// in headless Chromium (as page_flow.mjs).
//
//   node tests/browser/page_program_flow.mjs <api_url> <screenshot.png> <plan.json>
//
// plan.json: {"program": "triage", "steps": [{"name": "typed", "fields": {"ticket": "..."}}, ...]}
// Picks the program, then for each step fills the fields it names (text
// typed, a select by its option's label, a checkbox set), submits, waits
// for a result, a failure or a refusal, and records the whole view: the
// form as built, errors next to fields, the panels with their typed values.
// A screenshot per step: <screenshot>-<step name>.png.
// Prints one JSON object on stdout; the caller judges it.

import { readFile } from 'node:fs/promises';
import { fillForm, openPage, pickProgram, read, runFlow, sibling, waitSettled } from './lib.mjs';

const [apiUrl, screenshot, planPath] = process.argv.slice(2);
if (!apiUrl || !screenshot || !planPath) {
  console.error('usage: node page_program_flow.mjs <api_url> <screenshot.png> <plan.json>');
  process.exit(2);
}
const plan = JSON.parse(await readFile(planPath, 'utf8'));

const report = { api_url: apiUrl, program: plan.program, steps: {} };
await runFlow('page-program', report, async (page) => {
  report.page_status = await openPage(page, apiUrl);
  await pickProgram(page, plan.program);
  report.loaded = await read.job(page);
  for (const step of plan.steps) {
    await fillForm(page, step.fields);
    await page.fill('#temperature', step.temperature ?? '');
    await page.click('#submit');
    await waitSettled(page);
    report.steps[step.name] = await read.job(page);
    await page.screenshot({ path: sibling(screenshot, step.name), fullPage: true });
  }
});
