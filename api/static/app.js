// The page: pick a program, run one job from a form built from its input
// schema and watch its output fields stream in, or upload a JSONL/CSV file
// as a batch and watch it progress and page through its results.
//
// It talks to the API as any client does: GET /programs, POST
// /programs/{name}/jobs and /batches, the jobs' and batches' event streams,
// GET /batches/{id}/results and results.ndjson, POST /jobs/{id}/feedback. Every piece of server, model
// or user text goes into the page as text (textContent, text nodes,
// attributes), never as HTML. One file: the API serves this path without a
// key (api/auth.py's PUBLIC_PATHS), and a second script would need one.
'use strict';

(() => {
  // ---------------------------------------------------------------------------
  // DOM helpers

  const $ = (id) => document.getElementById(id);

  // Properties that are set on the element itself rather than as attributes.
  const PROPERTIES = new Set(['hidden', 'disabled', 'checked', 'required', 'value', 'selected', 'rows']);

  // An element with attributes and children; strings become text nodes, so
  // nothing passed here is ever parsed as HTML.
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (PROPERTIES.has(name)) node[name] = value;
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
    return node;
  }

  function setBadge(node, status) {
    node.textContent = status;
    node.dataset.status = status;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------------------
  // Talking to the API

  const API_KEY_STORAGE = 'dspy-jobs.api-key';
  const apiKeyInput = $('api-key');

  // The key, if the server wants one, is kept in this browser only
  // (localStorage) and sent as a header; EventSource cannot send headers, so
  // event streams get it as ?api_key= (the server takes it there only).
  function loadApiKey() {
    try {
      apiKeyInput.value = localStorage.getItem(API_KEY_STORAGE) || '';
    } catch {
      // storage disabled: the key lasts as long as the page
    }
  }

  function saveApiKey() {
    try {
      if (apiKey()) localStorage.setItem(API_KEY_STORAGE, apiKey());
      else localStorage.removeItem(API_KEY_STORAGE);
    } catch {
      // storage disabled: the key lasts as long as the page
    }
  }

  function apiKey() {
    return apiKeyInput.value.trim();
  }

  function authHeaders(extra = {}) {
    const headers = { Accept: 'application/json', ...extra };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    return headers;
  }

  // One JSON request: `{response, body}` (body null when it is not JSON).
  // Throws only when the server could not be reached.
  async function api(method, path, payload) {
    const init = { method, headers: authHeaders() };
    if (payload !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(path, init);
    const body = await response.json().catch(() => null);
    return { response, body };
  }

  function eventsUrl(path) {
    return apiKey() ? `${path}?api_key=${encodeURIComponent(apiKey())}` : path;
  }

  // What a refusal means to the person at the page, by status.
  function refusalTitle(status, otherwise) {
    const what = {
      401: 'This server needs an API key: enter yours above',
      413: 'Too large for this server',
      429: 'Too many requests for this key',
      503: 'The service is unavailable',
    }[status] || otherwise;
    return `${what} (HTTP ${status})`;
  }

  // Error bodies are {"message", "detail"} (api/errors.py).
  function describeFailure(response, body) {
    if (body && typeof body.message === 'string' && body.message) return body.message;
    if (body && typeof body.detail === 'string' && body.detail) return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((e) => `${locText(e.loc)}: ${e.msg}`).join('\n');
    }
    return response.statusText || 'The server refused the request.';
  }

  function locText(loc) {
    return (loc || []).filter((part) => part !== 'body').join('.') || 'body';
  }

  function parseEvent(event) {
    try {
      return JSON.parse(event.data);
    } catch {
      return null;
    }
  }

  function showProblem(title, message) {
    $('problem-title').textContent = title;
    $('problem-message').textContent = message;
    $('problem').hidden = false;
  }

  function hideProblem() {
    $('problem').hidden = true;
  }

  // Reads a temperature field: a number, nothing (the default), or an error.
  function readTemperature(input) {
    if (input.validity.badInput) return { error: 'not a number: use 0 to 2, or leave it empty for the default' };
    return input.value.trim() === '' ? {} : { value: Number(input.value) };
  }

  // ---------------------------------------------------------------------------
  // JSON Schema, as GET /programs gives it (pydantic's, from the signature)

  // A schema with `$ref` followed and `X | None` reduced to X: for a form,
  // null only means the field may be left out.
  function resolve(schema, root) {
    let current = schema || {};
    for (let hops = 0; hops < 8; hops += 1) {
      const { $ref, anyOf, oneOf, ...own } = current;
      if ($ref) {
        current = { ...definition(root, $ref), ...own };
        continue;
      }
      const options = (anyOf || oneOf || []).filter((option) => option.type !== 'null');
      if ((anyOf || oneOf) && options.length === 1) {
        current = { ...options[0], ...own };
        continue;
      }
      break;
    }
    return current;
  }

  function definition(root, ref) {
    let node = root;
    for (const part of String(ref).replace(/^#\//, '').split('/')) node = node ? node[part] : undefined;
    return node || {};
  }

  // How a value of this schema is entered and shown.
  function kindOf(schema) {
    if (Array.isArray(schema.enum) || 'const' in schema) return 'enum';
    const kinds = { string: 'text', integer: 'integer', number: 'number', boolean: 'boolean', array: 'list' };
    return kinds[schema.type] || 'json'; // objects, unions, anything else: JSON
  }

  function enumValues(schema) {
    return 'const' in schema ? [schema.const] : schema.enum;
  }

  function typeLabel(schema, root) {
    const kind = kindOf(schema);
    if (kind === 'enum') return `one of: ${enumValues(schema).map(String).join(', ')}`;
    if (kind === 'list') return `list of ${typeLabel(resolve(schema.items, root), root)}`;
    if (kind === 'json') return schema.type === 'object' ? 'object' : 'JSON';
    return { text: 'text', integer: 'integer', number: 'number', boolean: 'true or false' }[kind];
  }

  // The fields of an object schema, in order: [{name, title, schema, required}].
  // The title is the property's own: a `$ref` property has none, and the
  // model it points to is titled after its class (`ExtractorAddress`).
  function schemaFields(root) {
    if (!root || !root.properties) return [];
    const required = new Set(root.required || []);
    return Object.entries(root.properties).map(([name, schema]) => ({
      name,
      title: schema.title || titleOf(name),
      schema: resolve(schema, root),
      required: required.has(name),
    }));
  }

  function titleOf(name) {
    const words = name.replace(/_/g, ' ');
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  // A small example value of a schema, for placeholders and the batch format.
  function exampleValue(schema, root, depth = 0) {
    const kind = kindOf(schema);
    if (kind === 'enum') return enumValues(schema)[0];
    if (kind === 'integer') return 1;
    if (kind === 'number') return 0.5;
    if (kind === 'boolean') return true;
    if (kind === 'list') return depth > 2 ? [] : [exampleValue(resolve(schema.items, root), root, depth + 1)];
    if (kind === 'text') return '…';
    const fields = depth > 2 ? [] : schemaFields({ ...schema, $defs: root.$defs, definitions: root.definitions });
    return Object.fromEntries(fields.map((f) => [f.name, exampleValue(f.schema, root, depth + 1)]));
  }

  // ---------------------------------------------------------------------------
  // Text to typed values: list lines in the form, and CSV cells

  const BOOLEAN_WORDS = { true: true, false: false, yes: true, no: false, 1: true, 0: false, y: true, n: false };

  // `{value}` or `{error}`.
  function parseScalar(text, schema, root) {
    const raw = text.trim();
    switch (kindOf(schema)) {
      case 'text':
        return { value: text };
      case 'integer':
        return /^[+-]?\d+$/.test(raw) ? { value: Number(raw) } : { error: `“${raw}” is not a whole number` };
      case 'number': {
        const number = Number(raw);
        return raw !== '' && Number.isFinite(number) ? { value: number } : { error: `“${raw}” is not a number` };
      }
      case 'boolean': {
        const value = BOOLEAN_WORDS[raw.toLowerCase()];
        return value === undefined ? { error: `“${raw}” is not true or false` } : { value };
      }
      case 'enum': {
        // A value not in the list goes as it is: the API's answer names the allowed ones.
        const match = enumValues(schema).find((option) => String(option) === raw);
        return { value: match === undefined ? raw : match };
      }
      case 'list':
        // A CSV cell: a JSON array, or items separated by semicolons.
        if (raw.startsWith('[')) return parseJson(raw);
        return parseItems(raw.split(';').map((part) => part.trim()).filter(Boolean), schema, root);
      default:
        return parseJson(raw);
    }
  }

  function parseJson(text) {
    try {
      return { value: JSON.parse(text) };
    } catch (err) {
      return { error: `not valid JSON (${err.message})` };
    }
  }

  function parseItems(parts, schema, root) {
    const itemSchema = resolve(schema.items, root);
    const values = [];
    for (const [i, part] of parts.entries()) {
      const parsed = parseScalar(part, itemSchema, root);
      if (parsed.error) return { error: `item ${i + 1}: ${parsed.error}` };
      values.push(parsed.value);
    }
    return { value: values };
  }

  // ---------------------------------------------------------------------------
  // Typed values to the page: a list as a list, an enum as a label, ...

  function renderValue(value, schema, root, depth = 0) {
    const resolved = resolve(schema, root);
    if (value === null || value === undefined) return el('span', { class: 'v-none', 'data-type': 'null' }, '—');
    if (Array.isArray(value)) return renderList(value, resolved, root, depth);
    switch (typeof value) {
      case 'boolean':
        return el('span', { class: 'v-bool', 'data-type': 'boolean', 'data-value': String(value) }, String(value));
      case 'number':
        return el('span', { class: 'v-number', 'data-type': 'number' }, String(value));
      case 'string':
        return kindOf(resolved) === 'enum'
          ? el('span', { class: 'v-label', 'data-type': 'enum' }, value)
          : el('span', { class: 'v-text', 'data-type': 'text' }, value);
      case 'object':
        return depth >= 3 ? renderJson(value) : renderObject(value, resolved, root, depth);
      default:
        return el('span', {}, String(value));
    }
  }

  function renderList(values, schema, root, depth) {
    if (values.length === 0) return el('span', { class: 'v-none', 'data-type': 'list' }, 'empty list');
    const items = values.map((item) => el('li', {}, renderValue(item, schema.items, root, depth + 1)));
    return el('ul', { class: 'v-list', 'data-type': 'list' }, ...items);
  }

  // An object as a small two-column table; deeper nesting falls back to JSON.
  function renderObject(value, schema, root, depth) {
    const entries = Object.entries(value);
    if (entries.length === 0) return el('span', { class: 'v-none', 'data-type': 'object' }, 'empty object');
    const properties = schema.properties || {};
    const rows = entries.map(([key, item]) =>
      el('tr', { 'data-key': key }, el('th', { scope: 'row' }, key),
        el('td', {}, renderValue(item, properties[key], root, depth + 1))));
    return el('table', { class: 'v-object', 'data-type': 'object' }, el('tbody', {}, ...rows));
  }

  function renderJson(value) {
    return el('pre', { class: 'v-json', 'data-type': 'json' }, JSON.stringify(value, null, 2));
  }

  // ---------------------------------------------------------------------------
  // Programs and the picker

  const programSelect = $('program');
  const state = {
    programs: [], // GET /programs
    program: null, // the one picked
    view: 'job', // 'job' | 'batch'
    busy: false, // a job is being submitted or streaming
  };

  function programNamed(name) {
    return state.programs.find((p) => p.name === name) || null;
  }

  // The choice survives a reload and can be linked to: #program=triage&view=batch.
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { program: params.get('program'), view: params.get('view') };
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.program) params.set('program', state.program.name);
    params.set('view', state.view);
    history.replaceState(null, '', `#${params}`);
  }

  // The key the programs were last loaded with, whether that load is under
  // way, and a counter so that only the latest load's answer counts.
  const programsLoad = { key: null, running: false, token: 0 };

  async function loadPrograms() {
    const token = ++programsLoad.token;
    programsLoad.key = apiKey();
    programsLoad.running = true;
    setState(state.busy ? document.body.dataset.state : 'loading');
    let answer = null;
    let failure = null;
    try {
      answer = await api('GET', '/programs');
    } catch (err) {
      failure = ['Could not reach the server', String((err && err.message) || err)];
    }
    if (token !== programsLoad.token) return;
    programsLoad.running = false;
    if (answer && (!answer.response.ok || !Array.isArray(answer.body))) {
      const { response, body } = answer;
      failure = [refusalTitle(response.status, 'Could not load the programs'), describeFailure(response, body)];
    }
    if (failure) {
      showProblem(...failure);
      showPrograms([]);
    } else {
      hideProblem();
      showPrograms(answer.body);
    }
    if (!state.busy) setState('idle');
  }

  function showPrograms(programs) {
    state.programs = programs;
    programSelect.replaceChildren(
      ...programs.map((p) =>
        el('option', { value: p.name, disabled: !p.available, title: p.problem || null },
          p.name + (p.default ? ' (default)' : '') + (p.available ? '' : ' (unavailable)'))),
    );
    if (programs.length === 0) programSelect.append(el('option', { value: '' }, 'no programs loaded'));
    const usable = programs.filter((p) => p.available);
    const wanted = state.program ? state.program.name : readHash().program;
    const chosen = usable.find((p) => p.name === wanted) || usable.find((p) => p.default) || usable[0] || null;
    if (chosen && state.program && chosen.name === state.program.name) {
      // Loaded again (a new key): same program, same form; what it shows stays.
      state.program = chosen;
      programSelect.value = chosen.name;
      $('program-meta').textContent = programMeta(chosen);
      return;
    }
    selectProgram(chosen);
  }

  function selectProgram(program) {
    state.program = program;
    programSelect.value = program ? program.name : '';
    $('program-meta').textContent = programMeta(program);
    buildJobForm(program);
    resetJobView();
    describeBatchFormat(program);
    reparseBatchFile();
    writeHash();
    if (document.body.dataset.state !== 'loading') setState('idle');
  }

  function programMeta(program) {
    if (!program) return '';
    const artifact = program.artifact || {};
    const parts = [`version ${program.version ?? '?'}`];
    if (artifact.built_at) parts.push(`built ${String(artifact.built_at).slice(0, 10)}`);
    if (artifact.optimizer) parts.push(`optimizer ${artifact.optimizer}`);
    if (artifact.dev_score !== undefined && artifact.dev_score !== null) parts.push(`dev score ${artifact.dev_score}`);
    const workers = (program.workers || []).length;
    parts.push(workers === 1 ? '1 worker online' : `${workers} workers online`);
    return parts.join(' · ');
  }

  // ---------------------------------------------------------------------------
  // The job form, built from the input schema

  let jobFields = []; // [{name, schema, required, kind, control, error}]

  function buildJobForm(program) {
    const container = $('input-fields');
    jobFields = [];
    if (!program || !program.input_schema) {
      container.replaceChildren(el('p', { class: 'muted' }, 'Pick a program to see its inputs.'));
      return;
    }
    const root = program.input_schema;
    jobFields = schemaFields(root).map((field) => ({ ...field, root, kind: kindOf(field.schema) }));
    container.replaceChildren(...jobFields.map(fieldBlock));
  }

  // One input: label, type, description, control, and where its error shows.
  function fieldBlock(field) {
    const id = `in-${field.name}`;
    field.control = inputControl(id, field);
    field.error = el('p', { class: 'field-error', id: `err-${field.name}`, hidden: true });
    field.control.setAttribute('aria-describedby', field.error.id);
    const head = el('div', { class: 'field-head' },
      el('label', { for: id, class: 'field-name' }, field.title),
      el('code', { class: 'field-key' }, field.name),
      el('span', { class: 'type' }, typeLabel(field.schema, field.root)),
      field.required ? el('span', { class: 'req' }, 'required') : el('span', { class: 'opt' }, 'optional'));
    const description = field.schema.description ? el('p', { class: 'desc' }, field.schema.description) : null;
    const hint = { list: 'one item per line', json: 'JSON' }[field.kind];
    return el('div', { class: 'field', 'data-field': field.name, 'data-kind': field.kind },
      head, description, field.control, hint ? el('p', { class: 'field-hint' }, hint) : null, field.error);
  }

  function inputControl(id, field) {
    const { schema, kind, root } = field;
    const hasDefault = schema.default !== undefined && schema.default !== null;
    const placeholder = hasDefault ? `default: ${JSON.stringify(schema.default)}` : null;
    switch (kind) {
      case 'integer':
      case 'number':
        return el('input', {
          id,
          type: 'number',
          step: kind === 'integer' ? '1' : 'any',
          inputmode: kind === 'integer' ? 'numeric' : 'decimal',
          min: schema.minimum ?? null,
          max: schema.maximum ?? null,
          placeholder,
        });
      case 'boolean':
        return el('input', { id, type: 'checkbox', checked: schema.default === true });
      case 'enum': {
        const values = enumValues(schema);
        // Options are numbered: an enum's values need not be strings.
        const options = values.map((value, i) =>
          el('option', { value: String(i), selected: value === schema.default }, String(value)));
        const none = el('option', { value: '' }, field.required ? '— choose —' : '— default —');
        return el('select', { id }, none, ...options);
      }
      case 'list':
        return el('textarea', { id, rows: 3, placeholder: placeholder || 'one per line' });
      case 'json':
        return el('textarea', { id, rows: 4, class: 'mono', placeholder: JSON.stringify(exampleValue(schema, root)) });
      default:
        return el('textarea', { id, rows: 3, placeholder, maxlength: schema.maxLength ?? null });
    }
  }

  // The control's value as the API expects it: `{value}`, `{}` (left out:
  // its default applies, or the API says it is required) or `{error}`.
  function readField(field) {
    const { control, kind, schema, required, root } = field;
    switch (kind) {
      case 'boolean':
        return { value: control.checked };
      case 'enum':
        return control.value === '' ? {} : { value: enumValues(schema)[Number(control.value)] };
      case 'integer':
      case 'number':
        if (control.validity.badInput) return { error: 'not a number' };
        return control.value === '' ? {} : { value: Number(control.value) };
      case 'list': {
        const lines = control.value.split('\n').map((line) => line.trim()).filter(Boolean);
        return lines.length === 0 && !required ? {} : parseItems(lines, schema, root);
      }
      case 'json':
        return control.value.trim() === '' ? {} : parseJson(control.value);
      default:
        // A required text goes even when empty: the API says why it will not do.
        return control.value === '' && !required ? {} : { value: control.value };
    }
  }

  function clearFieldErrors() {
    for (const node of document.querySelectorAll('#job-form .field-error')) {
      node.textContent = '';
      node.hidden = true;
    }
    for (const node of document.querySelectorAll('#job-form .invalid')) node.classList.remove('invalid');
  }

  function fieldError(name, message) {
    const node = $(`err-${name}`);
    if (!node) return false;
    node.textContent = node.textContent ? `${node.textContent}\n${message}` : message;
    node.hidden = false;
    node.closest('.field')?.classList.add('invalid');
    return true;
  }

  // A 422's `detail` lists each invalid field with its `loc`
  // (["body", "input", "<field>", ...]); each message goes next to its field.
  function showFieldErrors(detail) {
    if (!Array.isArray(detail)) return;
    for (const entry of detail) {
      const loc = (entry.loc || []).filter((part) => part !== 'body');
      const [where, name, ...path] = loc;
      const within = path.length ? `${path.join('.')}: ` : '';
      if (where === 'input' && name !== undefined && fieldError(name, `${within}${entry.msg}`)) continue;
      if (where === 'temperature') fieldError('temperature', entry.msg);
    }
  }

  // ---------------------------------------------------------------------------
  // One job: output panels, streaming, the result

  const panels = $('panels');
  let source = null; // the job's open EventSource, if any
  let clock = null; // interval updating the elapsed time while a job runs
  let job = null; // {id, program}: the job on show
  let texts = {}; // field -> text of the current attempt

  function setState(name) {
    document.body.dataset.state = name; // loading | idle | submitting | streaming | done | failed
    state.busy = name === 'submitting' || name === 'streaming';
    const submit = $('submit');
    submit.disabled = state.busy || name === 'loading' || !state.program;
    submit.textContent = state.busy ? 'Running…' : 'Run';
    $('batch-submit').disabled = name === 'loading' || !state.program || !batchFile.items;
    // The output on show belongs to the program that ran it.
    programSelect.disabled = state.busy || name === 'loading' || state.programs.length === 0;
  }

  function outputRoot(program) {
    return (program && program.output_schema) || {};
  }

  // A panel per output field, in the signature's order; text is wide.
  function buildPanels(program) {
    const root = outputRoot(program);
    panels.replaceChildren(...schemaFields(root).map((f) => panelFor(f.name, f.title, f.schema, root)));
  }

  function panelFor(name, title, schema, root) {
    const kind = kindOf(schema);
    const wide = kind === 'text' || kind === 'json';
    return el('article', { class: `card panel${wide ? ' wide' : ''}`, 'data-field': name, 'data-kind': kind },
      el('h2', {}, title, ' ',
        el('span', { class: 'type' }, typeLabel(schema, root))),
      schema.description ? el('p', { class: 'desc' }, schema.description) : null,
      el('p', { class: 'stream', id: `field-${name}` }),
      el('div', { class: 'value', hidden: true }));
  }

  // The panel of a field, made on the spot for one the schema does not list.
  function panel(name) {
    const found = [...panels.children].find((p) => p.dataset.field === name);
    if (found) return found;
    const made = panelFor(name, titleOf(name), {}, {});
    panels.append(made);
    return made;
  }

  function markStreaming(field) {
    for (const node of panels.children) node.classList.toggle('streaming', node.dataset.field === field);
  }

  // A `running` status starts a new attempt: text collected before it is dropped.
  function clearTokens() {
    texts = {};
    for (const node of panels.children) {
      node.querySelector('.stream').textContent = '';
      node.querySelector('.stream').hidden = false;
      node.querySelector('.value').hidden = true;
    }
    markStreaming(null);
  }

  function resetJobView() {
    closeStream();
    stopClock();
    job = null;
    $('job').hidden = true;
    $('final').hidden = true;
    $('feedback').hidden = true;
    buildPanels(state.program);
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
    return `${usage.prompt_tokens ?? 0} prompt + ${usage.completion_tokens ?? 0} completion`;
  }

  // The record is the truth: every field shown as its type replaces the text it streamed as.
  function showResult(record) {
    const program = programNamed(record.program) || state.program;
    const root = outputRoot(program);
    const properties = root.properties || {};
    for (const [name, value] of Object.entries(record.result || {})) {
      const node = panel(name);
      node.querySelector('.value').replaceChildren(renderValue(value, properties[name], root));
      node.querySelector('.value').hidden = false;
      node.querySelector('.stream').hidden = true;
    }
    setBadge($('final-status'), record.status);
    $('final-program').textContent = `${record.program}${record.program_version ? ` v${record.program_version}` : ''}`;
    $('final-elapsed').textContent = elapsedText(record);
    $('final-usage').textContent = usageText(record.usage);
    $('final-attempts').textContent = String(record.attempts ?? '—');
    $('final-temperature').textContent = record.temperature == null ? 'default' : String(record.temperature);
    $('final').hidden = false;
  }

  function finish(record) {
    closeStream(); // before anything else: a closed source never reconnects
    stopClock();
    markStreaming(null);
    $('job-cancel').hidden = true;
    setBadge($('status'), record.status);
    $('clock').textContent = elapsedText(record);
    if (record.status === 'succeeded') {
      showResult(record);
      showFeedback(record);
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
    $('job-cancel').hidden = true;
    showProblem(
      'Lost the event stream',
      `The connection to the server closed before the job finished. The job may still complete: see /jobs/${job.id}.`,
    );
    setState('failed');
  }

  function showStatus(data) {
    if (data.status === 'running') {
      clearTokens();
      $('attempt').textContent = data.attempt > 1 ? `attempt ${data.attempt} (retrying)` : '';
    }
    if (data.status === 'waiting') {
      // The LM is busy (or paused by its provider): the job waits its turn, no attempt spent.
      const until = data.until ? ` until ${new Date(data.until * 1000).toLocaleTimeString()}` : '';
      $('attempt').textContent = `waiting for the model (${String(data.reason || '').replaceAll('_', ' ')})${until}`;
    }
    setBadge($('status'), data.status);
  }

  function showToken(data) {
    texts[data.field] = (texts[data.field] || '') + data.text;
    const node = panel(data.field);
    node.querySelector('.stream').textContent = texts[data.field];
    markStreaming(data.field);
  }

  // Event protocol: core/events.py. Events of a source we have replaced are dropped.
  function follow(id) {
    source = new EventSource(eventsUrl(`/jobs/${encodeURIComponent(id)}/events`));
    const current = source;
    const live = (handler) => (event) => {
      const data = parseEvent(event);
      if (data && current === source) handler(data);
    };
    current.addEventListener('status', live(showStatus));
    current.addEventListener('token', live(showToken));
    current.addEventListener('result', live(finish));

    // `error` is both the job's terminal event (a MessageEvent with data) and
    // the browser's own signal that the connection failed (no data).
    current.addEventListener('error', (event) => {
      if (current !== source) return;
      if (typeof event.data === 'string' && event.data !== '') {
        live(finish)(event);
      } else if (current.readyState === EventSource.CLOSED) {
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

  // The form's values, or null after showing what is wrong next to each field.
  function readJobForm() {
    const input = {};
    let ok = true;
    for (const field of jobFields) {
      const read = readField(field);
      if (read.error) {
        fieldError(field.name, read.error);
        ok = false;
      } else if ('value' in read) {
        input[field.name] = read.value;
      }
    }
    const payload = { input };
    const temperature = readTemperature($('temperature'));
    if (temperature.error) {
      fieldError('temperature', temperature.error);
      ok = false;
    } else if ('value' in temperature) {
      payload.temperature = temperature.value;
    }
    return ok ? payload : null;
  }

  async function submitJob() {
    const program = state.program;
    if (!program) return;
    hideProblem();
    clearFieldErrors();
    saveApiKey();
    const payload = readJobForm();
    if (payload === null) {
      showProblem('Check the highlighted fields', 'Some inputs could not be read; see the messages next to them.');
      setState('idle');
      return;
    }

    // The previous job's view goes at once; the new one shows once accepted.
    resetJobView();
    setState('submitting');
    let answer;
    try {
      answer = await api('POST', program.links.jobs, payload);
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
      setState('idle');
      return;
    }
    const { response, body } = answer;
    if (!response.ok || !body || !body.id) {
      if (response.status === 422 && body) showFieldErrors(body.detail);
      showProblem(refusalTitle(response.status, 'The job was not accepted'), describeFailure(response, body));
      setState('idle');
      return;
    }
    startJob(body);
  }

  function startJob(record) {
    job = { id: record.id, program: record.program };
    clearTokens();
    $('attempt').textContent = '';
    $('job-id').textContent = record.id;
    setBadge($('status'), record.status);
    $('job-cancel').hidden = false;
    $('job').hidden = false;
    setState('streaming');
    startClock();
    follow(record.id);
  }

  // The job's own event stream says how it ended; a 409 means it already had.
  async function cancelJob() {
    if (!job) return;
    $('job-cancel').disabled = true;
    try {
      const { response, body } = await api('POST', `/jobs/${encodeURIComponent(job.id)}/cancel`);
      if (!response.ok && response.status !== 409) {
        showProblem(refusalTitle(response.status, 'Could not cancel the job'), describeFailure(response, body));
      }
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
    } finally {
      $('job-cancel').disabled = false;
    }
  }

  // ---------------------------------------------------------------------------
  // Feedback on a finished job: thumbs, a correction per output field, a comment

  const feedback = {
    jobId: null,
    score: null, // 'good' | 'bad' | null
    fields: [], // the correction's fields: [{name, schema, kind, control, error, ...}]
  };

  function showFeedback(record) {
    const program = programNamed(record.program) || state.program;
    const root = outputRoot(program);
    feedback.jobId = record.id;
    feedback.score = null;
    feedback.fields = schemaFields(root).map((field) => correctionField(field, root, (record.result || {})[field.name]));
    $('correction-fields').replaceChildren(...feedback.fields.map((field) => field.block));
    $('feedback-correct').open = false;
    $('feedback-comment').value = '';
    $('feedback-note').textContent = '';
    pressThumb(null);
    $('feedback').hidden = false;
  }

  // A correction's field: left empty, it is not sent. A boolean is a choice
  // (a checkbox cannot say "no correction"); the placeholder is what the job answered.
  function correctionField(field, root, answered) {
    const schema = field.schema.type === 'boolean' ? { ...field.schema, enum: [true, false] } : field.schema;
    const made = { ...field, schema, root, required: false, kind: kindOf(schema) };
    const id = `fix-${field.name}`;
    made.control = inputControl(id, made);
    if (made.kind === 'enum') {
      made.control.options[0].textContent = '— as answered —';
    } else if (answered !== undefined && 'placeholder' in made.control) {
      const shown = made.kind === 'list' && Array.isArray(answered) ? answered.join('\n') : answered;
      made.control.placeholder = typeof shown === 'string' ? shown : JSON.stringify(shown);
    }
    made.error = el('p', { class: 'field-error', id: `fix-err-${field.name}`, hidden: true });
    made.block = el('div', { class: 'field', 'data-field': field.name, 'data-kind': made.kind },
      el('div', { class: 'field-head' },
        el('label', { for: id, class: 'field-name' }, field.title),
        el('code', { class: 'field-key' }, field.name),
        el('span', { class: 'type' }, typeLabel(schema, root))),
      made.control, made.error);
    return made;
  }

  function pressThumb(score) {
    feedback.score = score;
    $('feedback-good').setAttribute('aria-pressed', String(score === 'good'));
    $('feedback-bad').setAttribute('aria-pressed', String(score === 'bad'));
    $('feedback-send').disabled = score === null && !correctionTouched();
  }

  function correctionTouched() {
    return feedback.fields.some((field) => 'value' in readField(field) || readField(field).error);
  }

  function correctionError(name, message) {
    const field = feedback.fields.find((f) => f.name === name);
    if (!field) return false;
    field.error.textContent = message;
    field.error.hidden = false;
    return true;
  }

  async function sendFeedback() {
    const correction = {};
    let ok = true;
    for (const field of feedback.fields) {
      field.error.hidden = true;
      const read = readField(field);
      if (read.error) {
        correctionError(field.name, read.error);
        ok = false;
      } else if ('value' in read) {
        correction[field.name] = read.value;
      }
    }
    if (!ok) return;
    const corrected = Object.keys(correction).length > 0;
    // A correction without a thumb says the answer was wrong.
    const payload = { score: feedback.score || (corrected ? 'bad' : 'good') };
    if (corrected) payload.correction = correction;
    const comment = $('feedback-comment').value.trim();
    if (comment) payload.comment = comment;
    $('feedback-send').disabled = true;
    let answer;
    try {
      answer = await api('POST', `/jobs/${encodeURIComponent(feedback.jobId)}/feedback`, payload);
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
      $('feedback-send').disabled = false;
      return;
    }
    const { response, body } = answer;
    if (!response.ok) {
      const detail = body && Array.isArray(body.detail) ? body.detail : [];
      for (const entry of detail) {
        const [where, name] = (entry.loc || []).filter((part) => part !== 'body');
        if (where === 'correction') correctionError(name, entry.msg);
      }
      showProblem(refusalTitle(response.status, 'The feedback was not accepted'), describeFailure(response, body));
      $('feedback-send').disabled = false;
      return;
    }
    hideProblem();
    const n = (body.entries || []).length;
    $('feedback-note').textContent = `Thank you: ${n} feedback ${n === 1 ? 'entry' : 'entries'} on this job.`;
    $('feedback-send').disabled = false;
  }

  // ---------------------------------------------------------------------------
  // Batch files: JSONL (or a JSON array) and CSV, to the API's items

  // The file last chosen, and what it parsed to for the current program.
  const batchFile = { file: null, text: null, items: null, places: null };

  // One line of the format description per input, and an example line.
  function describeBatchFormat(program) {
    const box = $('batch-format');
    if (!program || !program.input_schema) {
      box.replaceChildren();
      return;
    }
    const root = program.input_schema;
    const fields = schemaFields(root);
    const example = { custom_id: 'item-1' };
    for (const f of fields) example[f.name] = exampleValue(f.schema, root);
    const inputs = fields.flatMap((f, i) => [
      i ? ', ' : '',
      el('code', {}, f.name),
      ` (${typeLabel(f.schema, root)}${f.required ? '' : ', optional'})`,
    ]);
    box.replaceChildren(
      el('p', {}, 'One item per line (JSONL) or per row (CSV with a header row). Keys or columns: ', ...inputs,
        ', and optionally ', el('code', {}, 'custom_id'), ', echoed in the results. CSV values are converted to ',
        'these types; a list cell is a JSON array or items separated by ', el('code', {}, ';'), '.'),
      el('p', {}, 'Example line: ', el('code', { class: 'example' }, JSON.stringify(example))),
    );
  }

  function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  // Records of a JSONL file (or a file holding one JSON array): [{place, fields}].
  function jsonRecords(text, errors) {
    const records = [];
    if (text.trimStart().startsWith('[')) {
      const parsed = parseJson(text);
      if (parsed.error || !Array.isArray(parsed.value)) {
        errors.push(`the file is not a JSON array of objects: ${parsed.error || 'not an array'}`);
        return records;
      }
      parsed.value.forEach((value, i) => {
        if (isObject(value)) records.push({ place: `item ${i + 1}`, fields: value });
        else errors.push(`item ${i + 1}: not a JSON object`);
      });
      return records;
    }
    text.split('\n').forEach((line, i) => {
      if (!line.trim()) return;
      const parsed = parseJson(line);
      if (parsed.error) errors.push(`line ${i + 1}: ${parsed.error}`);
      else if (!isObject(parsed.value)) errors.push(`line ${i + 1}: not a JSON object`);
      else records.push({ place: `line ${i + 1}`, fields: parsed.value });
    });
    return records;
  }

  // RFC 4180 rows: comma-separated cells, "quoted" when they hold commas,
  // quotes (doubled) or line breaks. [{line, cells}], blank lines skipped.
  function csvRows(text, errors) {
    const rows = [];
    let cells = [];
    let cell = '';
    let quoted = false;
    let line = 1;
    let rowLine = 1;
    const endRow = () => {
      cells.push(cell);
      if (cells.some((c) => c !== '')) rows.push({ line: rowLine, cells });
      cells = [];
      cell = '';
    };
    for (let i = 0; i < text.length; i += 1) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') {
          cell += '"';
          i += 1;
        } else if (c === '"') {
          quoted = false;
        } else {
          if (c === '\n') line += 1;
          cell += c;
        }
      } else if (c === '"' && cell === '') {
        quoted = true;
      } else if (c === ',') {
        cells.push(cell);
        cell = '';
      } else if (c === '\n') {
        endRow();
        line += 1;
        rowLine = line;
      } else {
        cell += c;
      }
    }
    if (quoted) errors.push(`line ${rowLine}: a quoted value is never closed`);
    else endRow();
    return rows;
  }

  // CSV records, each value converted to its input's type (a CSV has only text).
  function csvRecords(text, root, errors) {
    const [header, ...rows] = csvRows(text, errors);
    if (!header) return [];
    const names = header.cells.map((name) => name.trim());
    const seen = new Set();
    for (const name of names) {
      if (!name) errors.push(`line ${header.line}: a column has no name`);
      else if (seen.has(name)) errors.push(`line ${header.line}: column “${name}” appears twice`);
      seen.add(name);
    }
    const types = Object.fromEntries(schemaFields(root).map((f) => [f.name, f.schema]));
    return rows.map((row) => {
      const place = `line ${row.line}`;
      if (row.cells.length !== names.length) {
        errors.push(`${place}: ${row.cells.length} values, but the header has ${names.length} columns`);
      }
      const fields = {};
      names.forEach((name, i) => {
        const cell = row.cells[i] ?? '';
        if (cell === '') return; // an empty cell leaves the field out
        if (name === 'custom_id' || !types[name]) {
          fields[name] = cell;
          return;
        }
        const parsed = parseScalar(cell, types[name], root);
        if (parsed.error) errors.push(`${place}: ${name}: ${parsed.error}`);
        else fields[name] = parsed.value;
      });
      return { place, fields };
    });
  }

  // Records to the API's items; keys that are no input of the program are
  // named here, once, rather than in one API error per item.
  function toItems(records, program, errors) {
    const inputs = new Set(Object.keys(program.input_schema.properties || {}));
    const unknown = new Map(); // key -> first place it appears
    const items = records.map(({ place, fields }) => {
      const { custom_id: customId, ...input } = fields;
      for (const key of Object.keys(input)) if (!inputs.has(key) && !unknown.has(key)) unknown.set(key, place);
      const item = { input };
      if (customId !== undefined && customId !== null && customId !== '') item.custom_id = String(customId);
      return item;
    });
    for (const [key, place] of unknown) {
      errors.push(`${place}: “${key}” is not an input of ${program.name} (its inputs: ${[...inputs].join(', ')})`);
    }
    return items;
  }

  function parseBatchFile(name, text, program) {
    const errors = [];
    const clean = text.replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
    const first = clean.trimStart()[0];
    const csv = /\.csv$/i.test(name) || (first !== undefined && first !== '{' && first !== '[');
    const records = csv ? csvRecords(clean, program.input_schema, errors) : jsonRecords(clean, errors);
    const items = toItems(records, program, errors);
    if (records.length === 0 && errors.length === 0) errors.push('the file holds no items');
    const format = csv ? 'CSV' : first === '[' ? 'a JSON array' : 'JSONL';
    return { items, places: records.map((r) => r.place), format, errors };
  }

  async function chooseBatchFile() {
    const file = $('batch-file').files[0] || null;
    batchFile.file = file;
    batchFile.text = file ? await file.text() : null;
    reparseBatchFile();
  }

  // Parsed again when the program changes: the types and inputs are its.
  function reparseBatchFile() {
    batchFile.items = null;
    showItemErrors([]);
    $('batch-parsed').hidden = true;
    if (batchFile.text !== null && state.program && state.program.input_schema) {
      const parsed = parseBatchFile(batchFile.file.name, batchFile.text, state.program);
      batchFile.places = parsed.places;
      showItemErrors(parsed.errors);
      if (parsed.errors.length === 0) {
        batchFile.items = parsed.items;
        const count = parsed.items.length;
        const items = `${count} item${count === 1 ? '' : 's'}`;
        $('batch-parsed').textContent =
          `${items} read from ${batchFile.file.name} (${parsed.format}), ready to run as ${state.program.name}.`;
        $('batch-parsed').hidden = false;
      }
    }
    $('batch-submit').disabled = !batchFile.items || document.body.dataset.state === 'loading';
  }

  const MAX_ITEM_ERRORS = 20;

  function showItemErrors(errors) {
    const list = $('batch-errors');
    const shown = errors.slice(0, MAX_ITEM_ERRORS).map((message) => el('li', {}, message));
    if (errors.length > MAX_ITEM_ERRORS) {
      shown.push(el('li', { class: 'more' }, `… and ${errors.length - MAX_ITEM_ERRORS} more`));
    }
    list.replaceChildren(...shown);
    list.hidden = errors.length === 0;
  }

  // A 422 on a batch names items by index (["body", "items", 3, "input", "ticket"]): say where in the file.
  function batchErrors(detail) {
    if (!Array.isArray(detail)) return [];
    return detail.map((entry) => {
      const loc = (entry.loc || []).filter((part) => part !== 'body');
      if (loc[0] === 'items' && Number.isInteger(loc[1])) {
        const place = (batchFile.places && batchFile.places[loc[1]]) || `item ${loc[1] + 1}`;
        const field = loc.slice(2).filter((part) => part !== 'input').join('.');
        return `${place}: ${field ? `${field}: ` : ''}${entry.msg}`;
      }
      return `${locText(entry.loc)}: ${entry.msg}`;
    });
  }

  async function submitBatch() {
    const program = state.program;
    if (!program || !batchFile.items) return;
    hideProblem();
    saveApiKey();
    const payload = { items: batchFile.items };
    const temperature = readTemperature($('batch-temperature'));
    if (temperature.error) {
      showItemErrors([`temperature: ${temperature.error}`]);
      return;
    }
    if ('value' in temperature) payload.temperature = temperature.value;
    $('batch-submit').disabled = true;
    let answer;
    try {
      answer = await api('POST', program.links.batches, payload);
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
      return;
    } finally {
      $('batch-submit').disabled = !batchFile.items;
    }
    const { response, body } = answer;
    if (!response.ok || !body || !body.id) {
      if (response.status === 422 && body) showItemErrors(batchErrors(body.detail));
      showProblem(refusalTitle(response.status, 'The batch was not accepted'), describeFailure(response, body));
      return;
    }
    showItemErrors([]);
    startBatch(body);
  }

  // ---------------------------------------------------------------------------
  // A batch on show: progress, cancel, download

  const TERMINAL_BATCH = new Set(['completed', 'cancelled', 'failed', 'expired']);
  const batchView = { batch: null, source: null, polling: false };

  function startBatch(batch) {
    closeBatchStream();
    batchView.batch = batch;
    $('batch-id').textContent = batch.id;
    $('batch-note').textContent = '';
    $('batch').hidden = false;
    results.reset(batch);
    showBatch(batch);
    followBatch(batch.id);
  }

  function closeBatchStream() {
    if (batchView.source !== null) batchView.source.close();
    batchView.source = null;
    batchView.polling = false;
  }

  // Progress comes from the batch's event stream: `progress` when its counts
  // change, then one `done`.
  function followBatch(id) {
    const current = new EventSource(eventsUrl(`/batches/${encodeURIComponent(id)}/events`));
    batchView.source = current;
    const live = (event) => {
      const batch = parseEvent(event);
      if (batch && current === batchView.source && batch.id === batchView.batch.id) showBatch(batch);
    };
    current.addEventListener('progress', live);
    current.addEventListener('done', (event) => {
      live(event);
      // Closed once shown: a stream the server ended would otherwise reconnect.
      if (current === batchView.source) closeBatchStream();
    });
    current.addEventListener('error', () => {
      if (current !== batchView.source) return;
      if (current.readyState === EventSource.CLOSED) {
        // Refused (e.g. too many streams for this key): ask now and then instead.
        closeBatchStream();
        pollBatch(id);
      } else {
        $('batch-note').textContent = 'reconnecting…';
      }
    });
    current.addEventListener('open', () => {
      if (current === batchView.source) $('batch-note').textContent = '';
    });
  }

  async function pollBatch(id) {
    batchView.polling = true;
    $('batch-note').textContent = 'no live progress: checking every 2 s';
    while (batchView.polling && batchView.batch && batchView.batch.id === id) {
      try {
        const { response, body } = await api('GET', `/batches/${encodeURIComponent(id)}`);
        if (response.ok && body && batchView.polling) showBatch(body);
        if (response.ok && body && TERMINAL_BATCH.has(body.status)) break;
      } catch {
        // the server is away for now: try again
      }
      await sleep(2000);
    }
    batchView.polling = false;
  }

  function finishedCount(counts) {
    return counts.succeeded + counts.failed + counts.cancelled + (counts.expired || 0);
  }

  function showBatch(batch) {
    batchView.batch = batch;
    const counts = batch.counts;
    const total = counts.total || 0;
    const finished = finishedCount(counts);
    // Rounded down: 100 % only when every item has finished.
    const percent = total ? Math.floor((100 * finished) / total) : 100;
    const bar = $('batch-progress');
    bar.setAttribute('aria-valuenow', String(percent));
    bar.dataset.percent = String(percent);
    bar.dataset.finished = String(finished);
    bar.dataset.total = String(total);
    const share = (n) => `${total ? (100 * n) / total : 0}%`;
    bar.querySelector('.succeeded').style.width = share(counts.succeeded);
    bar.querySelector('.failed').style.width = share(counts.failed);
    bar.querySelector('.ended').style.width = share(counts.cancelled + (counts.expired || 0));
    bar.querySelector('.running').style.width = share(counts.running);
    $('batch-percent').textContent = `${percent} %`;
    $('batch-counts').textContent = countsText(counts, finished);
    setBadge($('batch-status'), batch.status);
    const over = TERMINAL_BATCH.has(batch.status);
    $('batch-cancel').hidden = over || batch.status === 'cancelling';
    $('batch-retry').hidden = !over || counts.failed + (counts.expired || 0) === 0 || Boolean(batch.retried_by);
    if (over && batch.error) $('batch-note').textContent = batch.error;
    else if (batch.retry_of) $('batch-note').textContent = `runs the failures of batch ${batch.retry_of} again`;
    results.refresh(over);
  }

  function countsText(counts, finished) {
    const parts = [`${finished} of ${counts.total} finished`];
    for (const name of ['succeeded', 'failed', 'cancelled', 'expired', 'running', 'queued']) {
      if (counts[name]) parts.push(`${counts[name]} ${name}`);
    }
    return parts.join(' · ');
  }

  async function cancelBatch() {
    const batch = batchView.batch;
    if (!batch) return;
    $('batch-cancel').disabled = true;
    try {
      const { response, body } = await api('POST', `/batches/${encodeURIComponent(batch.id)}/cancel`);
      if (response.ok && body) showBatch(body);
      else if (response.status !== 409) {
        showProblem(refusalTitle(response.status, 'Could not cancel the batch'), describeFailure(response, body));
      }
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
    } finally {
      $('batch-cancel').disabled = false;
    }
  }

  // A new batch of the failed and expired items (POST /batches/{id}/retry), followed here in its place.
  async function retryBatch() {
    const batch = batchView.batch;
    if (!batch) return;
    $('batch-retry').disabled = true;
    try {
      const { response, body } = await api('POST', `/batches/${encodeURIComponent(batch.id)}/retry`);
      if (response.ok && body) startBatch(body);
      else showProblem(refusalTitle(response.status, 'Could not retry the batch'), describeFailure(response, body));
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
    } finally {
      $('batch-retry').disabled = false;
    }
  }

  // Fetched, then saved from memory: the key goes as a header, which a plain
  // link cannot send (the API takes ?api_key= on event streams only).
  async function downloadResults() {
    const batch = batchView.batch;
    if (!batch) return;
    const button = $('batch-download');
    button.disabled = true;
    button.textContent = 'Preparing…';
    try {
      const path = `/batches/${encodeURIComponent(batch.id)}/results.ndjson`;
      const response = await fetch(path, { headers: authHeaders({ Accept: 'application/x-ndjson' }) });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        showProblem(refusalTitle(response.status, 'Could not download the results'), describeFailure(response, body));
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const link = el('a', { href: url, download: `batch-${batch.id}.ndjson`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      showProblem('Could not reach the server', String((err && err.message) || err));
    } finally {
      button.disabled = false;
      button.textContent = 'Download NDJSON';
    }
  }

  // ---------------------------------------------------------------------------
  // The results table, a page at a time (GET /batches/{id}/results?cursor=)

  const PAGE_SIZE = 50;
  // While a batch runs, the page on show is read again at most this often.
  const REFRESH_MS = 1000;

  const results = {
    batch: null,
    program: null,
    cursor: 0, // first item of the page on show
    previous: [], // cursors of the pages before it, to go back
    next: null,
    settled: false, // every item on the page has finished: reading it again changes nothing
    failedOnly: false, // the failed items only (GET /jobs?batch_id=&status=failed), a cursor of the API's
    token: 0, // the latest load; older answers are dropped
    loadedAt: 0,
    loading: false,

    reset(batch) {
      this.batch = batch;
      this.failedOnly = $('results-failed').checked;
      this.program = programNamed(batch.program);
      this.cursor = 0;
      this.previous = [];
      this.next = null;
      this.settled = false;
      this.loadedAt = 0;
      this.token += 1;
      resultsHead(this.program);
      $('results-table').tBodies[0].replaceChildren();
      $('results-range').textContent = '';
      pagerButtons();
    },

    // On progress: read the page again unless it cannot have changed, or was just read.
    refresh(batchOver) {
      if (this.settled && !batchOver) return;
      if (!batchOver && (this.loading || Date.now() - this.loadedAt < REFRESH_MS)) return;
      this.load(this.cursor);
    },

    async load(cursor) {
      const batch = this.batch;
      const token = ++this.token;
      this.loading = true;
      pagerButtons();
      try {
        const { response, body, items } = await (this.failedOnly ? failedItems(batch, cursor) : allItems(batch, cursor));
        if (token !== this.token) return;
        if (!response.ok || !items) {
          showProblem(refusalTitle(response.status, 'Could not read the results'), describeFailure(response, body));
          return;
        }
        this.cursor = cursor;
        this.next = body.next_cursor;
        this.loadedAt = Date.now();
        this.settled = items.every((item) => TERMINAL_ITEM.has(item.status));
        showResultsPage(items, this.program, this.failedOnly ? null : cursor, batchView.batch.counts);
      } catch (err) {
        if (token === this.token) showProblem('Could not reach the server', String((err && err.message) || err));
      } finally {
        if (token === this.token) this.loading = false;
        pagerButtons();
      }
    },
  };

  const TERMINAL_ITEM = new Set(['succeeded', 'failed', 'cancelled', 'expired']);

  async function allItems(batch, cursor) {
    const query = `cursor=${encodeURIComponent(cursor)}&limit=${PAGE_SIZE}`;
    const { response, body } = await api('GET', `/batches/${encodeURIComponent(batch.id)}/results?${query}`);
    return { response, body, items: response.ok && body && Array.isArray(body.items) ? body.items : null };
  }

  // The failed items are jobs (GET /jobs?batch_id=): shown as the results table has items.
  async function failedItems(batch, cursor) {
    const query = `batch_id=${encodeURIComponent(batch.id)}&status=failed&limit=${PAGE_SIZE}`
      + (cursor === 0 ? '' : `&cursor=${encodeURIComponent(cursor)}`);
    const { response, body } = await api('GET', `/jobs?${query}`);
    const jobs = response.ok && body && Array.isArray(body.data) ? body.data : null;
    const items = jobs && jobs.map((job) => ({ ...job, index: Number(job.id.slice(job.id.lastIndexOf('-') + 1)) }));
    return { response, body, items };
  }

  function toggleFailedOnly() {
    results.failedOnly = $('results-failed').checked;
    results.previous = [];
    results.load(0);
  }

  function pagerButtons() {
    $('results-table').setAttribute('aria-busy', String(results.loading));
    $('results-prev').disabled = results.loading || results.previous.length === 0;
    $('results-next').disabled = results.loading || results.next === null;
  }

  function nextPage() {
    if (results.next === null) return;
    results.previous.push(results.cursor);
    results.load(results.next);
  }

  function previousPage() {
    if (results.previous.length === 0) return;
    results.load(results.previous.pop());
  }

  function outputNames(program) {
    return schemaFields(outputRoot(program)).map((f) => f.name);
  }

  function resultsHead(program) {
    const names = ['#', 'custom_id', 'status', ...outputNames(program), 'error'];
    $('results-table').tHead.rows[0].replaceChildren(...names.map((name) => el('th', { scope: 'col' }, name)));
  }

  // `cursor` null: the failed items only, a page of them.
  function showResultsPage(items, program, cursor, counts) {
    const root = outputRoot(program);
    const names = outputNames(program);
    const rows = items.map((item) => resultRow(item, names, root));
    $('results-table').tBodies[0].replaceChildren(...rows);
    const total = counts.total;
    if (cursor === null) {
      $('results-range').textContent = items.length ? `${counts.failed} failed of ${total}` : 'no failed items';
      return;
    }
    $('results-range').textContent = items.length
      ? `items ${cursor + 1}–${cursor + items.length} of ${total}`
      : `no items from ${cursor + 1} (of ${total})`;
  }

  function resultRow(item, names, root) {
    const properties = root.properties || {};
    const cell = (column, ...children) => el('td', { 'data-col': column }, ...children);
    const result = item.result || {};
    const outputs = names.map((name) =>
      cell(name, item.result && name in result ? renderValue(result[name], properties[name], root) : ''));
    return el('tr', { 'data-index': item.index, 'data-status': item.status },
      cell('index', String(item.index)),
      cell('custom_id', item.custom_id ?? ''),
      cell('status', el('span', { class: 'badge', 'data-status': item.status }, item.status)),
      ...outputs,
      cell('error', item.error ? errorText(item.error) : ''));
  }

  // Clamped to a few lines in the table; the whole message is its tooltip.
  function errorText(error) {
    const type = String(error.type || 'error');
    const message = error.message ? String(error.message) : '';
    return el('span', { class: 'item-error', title: message ? `${type}: ${message}` : type },
      el('strong', {}, type), message ? `: ${message}` : '');
  }

  // ---------------------------------------------------------------------------
  // Views and wiring

  function showView(view) {
    state.view = view === 'batch' ? 'batch' : 'job';
    for (const name of ['job', 'batch']) {
      $(`tab-${name}`).setAttribute('aria-selected', String(state.view === name));
      $(`view-${name}`).hidden = state.view !== name;
    }
    writeHash();
  }

  $('job-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (!$('submit').disabled) submitJob();
  });
  $('job-form').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $('job-form').requestSubmit();
    }
  });
  $('batch-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (!$('batch-submit').disabled) submitBatch();
  });
  $('batch-file').addEventListener('change', chooseBatchFile);
  programSelect.addEventListener('change', () => selectProgram(programNamed(programSelect.value)));
  $('tab-job').addEventListener('click', () => showView('job'));
  $('tab-batch').addEventListener('click', () => showView('batch'));
  $('job-cancel').addEventListener('click', cancelJob);
  $('batch-cancel').addEventListener('click', cancelBatch);
  $('batch-retry').addEventListener('click', retryBatch);
  $('results-failed').addEventListener('change', toggleFailedOnly);
  $('batch-download').addEventListener('click', downloadResults);
  $('results-next').addEventListener('click', nextPage);
  $('results-prev').addEventListener('click', previousPage);
  $('feedback-good').addEventListener('click', () => pressThumb(feedback.score === 'good' ? null : 'good'));
  $('feedback-bad').addEventListener('click', () => pressThumb(feedback.score === 'bad' ? null : 'bad'));
  $('correction-fields').addEventListener('input', () => pressThumb(feedback.score));
  $('correction-fields').addEventListener('change', () => pressThumb(feedback.score));
  $('feedback-send').addEventListener('click', sendFeedback);

  // A new key may see what the old one could not: load the programs again.
  // Enter in the field fires both `change` and `submit`: the same key is
  // loaded again only when its last load failed and none is under way.
  const applyKey = () => {
    saveApiKey();
    const same = apiKey() === programsLoad.key;
    if (same && (programsLoad.running || state.programs.length > 0)) return;
    loadPrograms();
  };
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    applyKey();
  });
  apiKeyInput.addEventListener('change', applyKey);
  window.addEventListener('beforeunload', () => {
    closeStream();
    closeBatchStream();
  });

  loadApiKey();
  showView(readHash().view);
  loadPrograms();
})();
