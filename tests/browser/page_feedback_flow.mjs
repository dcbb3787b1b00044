// The feedback box of a finished job, driven as a person would, in headless Chromium.
//
//   node tests/browser/page_feedback_flow.mjs <api_url> <screenshot.png> <question> <right answer>
//
// 1. Asks `question` of the default program and waits for its result.
// 2. Presses the thumb down, opens "Correct it", types `right answer` as the
//    `answer` (every other field left empty: not corrected) and a comment,
//    and sends it.
// 3. Reports what the page showed: the box, its fields, the note after sending.
//
// Exit code 0 whenever it could report; the caller judges the report.

import { fillForm, openPage, runFlow, sibling, waitSettled } from './lib.mjs';

const [apiUrl, screenshot, question, rightAnswer] = process.argv.slice(2);
if (!apiUrl || !screenshot || !question || !rightAnswer) {
  console.error('usage: node page_feedback_flow.mjs <api_url> <screenshot.png> <question> <right answer>');
  process.exit(2);
}

const report = { api_url: apiUrl, question };
await runFlow('page-feedback-flow', report, async (page) => {
  await openPage(page, apiUrl);
  await fillForm(page, { question });
  await page.click('#submit');
  await waitSettled(page);
  report.state = await page.evaluate(() => document.body.dataset.state);
  report.job_id = await page.textContent('#job-id');
  report.box_shown = await page.isVisible('#feedback');
  report.send_enabled_before = await page.isEnabled('#feedback-send');
  report.correction_fields = await page.$$eval('#correction-fields .field', (nodes) => nodes.map((n) => n.dataset.field));

  await page.click('#feedback-bad');
  report.bad_pressed = await page.getAttribute('#feedback-bad', 'aria-pressed');
  await page.click('#feedback-correct summary');
  await page.fill('#fix-answer', rightAnswer);
  await page.fill('#feedback-comment', 'the answer is wrong');
  await page.screenshot({ path: sibling(screenshot, 'filled'), fullPage: true });
  await page.click('#feedback-send');
  await page.waitForFunction(() => document.getElementById('feedback-note').textContent !== '');
  report.note = await page.textContent('#feedback-note');
  report.problem_shown = await page.isVisible('#problem');
  await page.screenshot({ path: screenshot, fullPage: true });
});
