// The page: submit a question with POST /jobs, follow /jobs/<id>/events.
// Every piece of server or model text goes in through textContent, never
// innerHTML. Event protocol: see core/events.py.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $('ask-form');
  const questionInput = $('question');
  const temperatureInput = $('temperature');
  const apiKeyInput = $('api-key');
  const API_KEY_STORAGE = 'dspy-jobs.api-key';
  const submitButton = $('submit');
  const panels = document.querySelector('.panels');
  const BUILT_IN_FIELDS = new Set(['reasoning', 'answer', 'key_concepts', 'question_type']);

  let source = null; // the open EventSource, if any
  let clock = null; // interval updating the elapsed time while a job runs
  let jobId = null;
  let texts = {}; // field -> text of the current attempt

  // The API key, if the server wants one, is kept in this browser only
  // (localStorage) and sent as a header; EventSource cannot send headers, so
  // the event stream gets it as ?api_key= (the server takes it there only).
  function loadApiKey() {
    try {
      apiKeyInput.value = localStorage.getItem(API_KEY_STORAGE) || '';
    } catch {
      // storage disabled: the key lasts as long as the page
    }
  }

  function saveApiKey() {
    try {
      const key = apiKeyInput.value.trim();
      if (key) localStorage.setItem(API_KEY_STORAGE, key);
      else localStorage.removeItem(API_KEY_STORAGE);
    } catch {
      // storage disabled: the key lasts as long as the page
    }
  }

  function apiKey() {
    return apiKeyInput.value.trim();
  }

  function setState(state) {
    document.body.dataset.state = state; // idle | submitting | streaming | done | failed
    const busy = state === 'submitting' || state === 'streaming';
    submitButton.disabled = busy;
    submitButton.textContent = busy ? 'Running…' : 'Ask';
  }

  function showProblem(title, message) {
    $('problem-title').textContent = title;
    $('problem-message').textContent = message;
    $('problem').hidden = false;
  }

  function hideProblem() {
    $('problem').hidden = true;
  }

  function setBadge(el, status) {
    el.textContent = status;
    el.dataset.status = status;
  }

  function panelText(field) {
    let text = document.getElementById(`field-${field}`);
    if (text) return text;
    // A field this page has no panel for (another program): give it one.
    const panel = document.createElement('article');
    panel.className = 'card panel wide extra';
    panel.dataset.field = field;
    const title = document.createElement('h2');
    title.textContent = field.replace(/_/g, ' ');
    text = document.createElement('p');
    text.className = 'stream';
    text.id = `field-${field}`;
    panel.append(title, text);
    panels.append(panel);
    return text;
  }

  function markStreaming(field) {
    for (const panel of panels.querySelectorAll('.panel')) {
      panel.classList.toggle('streaming', panel.dataset.field === field);
    }
  }

  // A `running` status starts a new attempt: text collected before it is dropped.
  function clearTokens() {
    texts = {};
    for (const extra of panels.querySelectorAll('.panel.extra')) extra.remove();
    for (const field of BUILT_IN_FIELDS) panelText(field).textContent = '';
    markStreaming(null);
  }

  function startClock() {
    const started = performance.now();
    stopClock();
    const tick = () => {
      $('clock').textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
    };
    tick();
    clock = setInterval(tick, 100);
  }

  function stopClock() {
    if (clock !== null) clearInterval(clock);
    clock = null;
  }

  function closeStream() {
    if (source !== null) source.close();
    source = null;
  }

  // Pydantic writes microseconds; keep milliseconds so every browser parses it.
  function timeMs(iso) {
    return iso ? Date.parse(String(iso).replace(/(\.\d{3})\d+/, '$1')) : NaN;
  }

  function seconds(ms) {
    return `${(ms / 1000).toFixed(2)} s`;
  }

  function elapsedText(record) {
    const total = timeMs(record.finished_at) - timeMs(record.created_at);
    if (!Number.isFinite(total)) return '—';
    const ran = timeMs(record.finished_at) - timeMs(record.started_at);
    return Number.isFinite(ran) ? `${seconds(total)} (ran ${seconds(ran)})` : seconds(total);
  }

  function usageText(usage) {
    if (!usage) return '—';
    const prompt = usage.prompt_tokens ?? 0;
    const completion = usage.completion_tokens ?? 0;
    return `${prompt} prompt + ${completion} completion`;
  }

  function fieldText(value) {
    return typeof value === 'string' ? value : JSON.stringify(value);
  }

  function concepts(value) {
    if (Array.isArray(value)) return value;
    if (typeof value === 'string') {
      try {
        const parsed = JSON.parse(value);
        if (Array.isArray(parsed)) return parsed;
      } catch {
        // not JSON: one concept per comma-separated part
      }
      return value.split(',').map((s) => s.trim()).filter(Boolean);
    }
    return [];
  }

  function showResult(record) {
    const result = record.result || {};
    // The record is the truth: show exactly what the job produced. A list
    // keeps the text it streamed as, unless nothing streamed.
    for (const [field, value] of Object.entries(result)) {
      const panel = panelText(field);
      if (typeof value === 'string' || !panel.textContent) panel.textContent = fieldText(value);
    }
    setBadge($('final-status'), record.status);
    $('final-question-type').textContent = result.question_type ?? '—';
    $('final-elapsed').textContent = elapsedText(record);
    $('final-usage').textContent = usageText(record.usage);
    $('final-attempts').textContent = String(record.attempts ?? '—');
    $('final-temperature').textContent = record.temperature == null ? 'default' : String(record.temperature);
    $('final-answer').textContent = result.answer == null ? '—' : fieldText(result.answer);
    const chips = $('final-key-concepts');
    chips.replaceChildren();
    const list = concepts(result.key_concepts);
    for (const concept of list) {
      const chip = document.createElement('li');
      chip.textContent = fieldText(concept);
      chips.append(chip);
    }
    if (list.length === 0) {
      const none = document.createElement('li');
      none.className = 'none';
      none.textContent = 'none';
      chips.append(none);
    }
    $('final').hidden = false;
  }

  function finish(record) {
    closeStream(); // before anything else: a closed source never reconnects
    stopClock();
    markStreaming(null);
    setBadge($('status'), record.status);
    $('clock').textContent = elapsedText(record);
    if (record.status === 'succeeded') {
      showResult(record);
      setState('done');
      return;
    }
    const error = record.error || {};
    const hint = error.retryable ? '\n\nThis kind of failure is temporary: submitting again may work.' : '';
    showProblem(
      `Job ${record.status}${error.type ? `: ${error.type}` : ''}`,
      `${error.message || 'The job did not produce a result.'}${hint}`,
    );
    setState('failed');
  }

  function lostStream() {
    closeStream();
    stopClock();
    markStreaming(null);
    showProblem(
      'Lost the event stream',
      `The connection to the server closed before the job finished. The job may still complete: see /jobs/${jobId}.`,
    );
    setState('failed');
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch {
      return null;
    }
  }

  function follow(job) {
    const key = apiKey();
    const query = key ? `?api_key=${encodeURIComponent(key)}` : '';
    source = new EventSource(`/jobs/${encodeURIComponent(job.id)}/events${query}`);
    const current = source;

    current.addEventListener('status', (event) => {
      const data = parse(event);
      if (!data || current !== source) return;
      if (data.status === 'running') {
        clearTokens();
        $('attempt').textContent = data.attempt > 1 ? `attempt ${data.attempt} (retrying)` : '';
      }
      if (data.status === 'waiting') {
        // The LM is busy (or paused by its provider): the job waits its turn, no attempt spent.
        const until = data.until ? ` until ${new Date(data.until * 1000).toLocaleTimeString()}` : '';
        $('attempt').textContent = `waiting for the model (${data.reason.replaceAll('_', ' ')})${until}`;
      }
      setBadge($('status'), data.status);
    });

    current.addEventListener('token', (event) => {
      const data = parse(event);
      if (!data || current !== source) return;
      texts[data.field] = (texts[data.field] || '') + data.text;
      panelText(data.field).textContent = texts[data.field];
      markStreaming(data.field);
    });

    current.addEventListener('result', (event) => {
      const record = parse(event);
      if (record && current === source) finish(record);
    });

    // `error` is both the job's terminal event (a MessageEvent with data) and
    // the browser's own signal that the connection failed (no data).
    current.addEventListener('error', (event) => {
      if (current !== source) return;
      if (typeof event.data === 'string' && event.data !== '') {
        const record = parse(event);
        if (record) finish(record);
        return;
      }
      if (current.readyState === EventSource.CLOSED) {
        lostStream();
      } else {
        // The browser reconnects by itself, sending Last-Event-ID; the server
        // resumes after the last event we got.
        $('attempt').textContent = 'reconnecting…';
      }
    });

    current.addEventListener('open', () => {
      if (current === source && $('attempt').textContent === 'reconnecting…') $('attempt').textContent = '';
    });
  }

  function describeFailure(response, body) {
    if (body && typeof body.message === 'string' && body.message) return body.message;
    if (body && typeof body.detail === 'string' && body.detail) return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail
        .map((e) => `${(e.loc || []).filter((p) => p !== 'body').join('.') || 'body'}: ${e.msg}`)
        .join('\n');
    }
    return response.statusText || 'The server refused the request.';
  }

  async function submit() {
    hideProblem();
    saveApiKey();
    const question = questionInput.value;
    if (!question.trim()) {
      showProblem('Nothing to ask', 'Type a question first.');
      questionInput.focus();
      return;
    }
    const payload = { question };
    if (temperatureInput.validity.badInput) {
      showProblem('Temperature is not a number', 'Use a number from 0 to 2, or leave it empty for the default.');
      temperatureInput.focus();
      return;
    }
    if (temperatureInput.value.trim() !== '') payload.temperature = Number(temperatureInput.value);

    // The previous job's view goes at once; the new one shows once accepted.
    closeStream();
    stopClock();
    $('job').hidden = true;
    $('final').hidden = true;
    setState('submitting');
    let response;
    let body = null;
    const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    try {
      response = await fetch('/jobs', { method: 'POST', headers, body: JSON.stringify(payload) });
      body = await response.json().catch(() => null);
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
      setState('idle');
      return;
    }
    if (!response.ok || !body || !body.id) {
      const what = {
        401: 'This server needs an API key: enter yours above',
        429: 'Too many requests for this key',
        503: 'The service is unavailable',
      }[response.status] || 'The job was not accepted';
      showProblem(`${what} (HTTP ${response.status})`, describeFailure(response, body));
      setState('idle');
      return;
    }

    jobId = body.id;
    clearTokens();
    $('attempt').textContent = '';
    $('job-id').textContent = body.id;
    setBadge($('status'), body.status);
    $('job').hidden = false;
    setState('streaming');
    startClock();
    follow(body);
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!submitButton.disabled) submit();
  });

  questionInput.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  apiKeyInput.addEventListener('change', saveApiKey);
  window.addEventListener('beforeunload', closeStream);
  loadApiKey();
  setState('idle');
})();
