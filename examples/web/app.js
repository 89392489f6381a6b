// The page: a text, a keep_ratio slider, the verdict, the latency of each
// call, and one row per layer with the tokens still alive after it.
// ?model=URL picks the converted directory (default: model/ beside the page).
import { LatexportModel } from './latexport-web.js';

const $ = (id) => document.getElementById(id);
const status = $('status');

function setStatus(state, message) {
  status.dataset.state = state;
  status.textContent = message;
}

function element(tag, attributes = {}, text = undefined) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function showScores(model, result) {
  const table = $('scores');
  table.replaceChildren();
  if (result.scores === undefined) {
    const preview = result.output.slice(0, 4).map((value) => value.toFixed(4)).join(', ');
    $('label').textContent = model.metadata.task === 'feature-extraction' ? `embedding [${preview}, …]` : result.output[0].toFixed(4);
    return;
  }
  $('label').textContent = result.label;
  result.scores.forEach((score, index) => {
    const row = element('tr', { 'data-label': model.labels[index] ?? `LABEL_${index}`, 'data-score': String(score) });
    row.append(element('td', {}, model.labels[index] ?? `LABEL_${index}`), element('td', {}, score.toFixed(4)));
    const bar = element('td');
    bar.append(element('span', { class: 'bar', style: `width: ${Math.round(score * 200)}px` }));
    row.append(bar);
    table.append(row);
  });
}

function showKept(result) {
  const view = $('kept');
  view.replaceChildren();
  const input = element('div', { class: 'layer input' });
  input.append(element('span', { class: 'name' }, `input (${result.tokens.length})`));
  result.tokens.forEach((token, position) => input.append(element('span', { class: 'token', 'data-position': position }, token)));
  view.append(input);
  result.kept.forEach((positions, layer) => {
    const alive = new Set(positions);
    const row = element('div', { class: 'layer', 'data-layer': layer });
    row.append(element('span', { class: 'name' }, `layer ${layer + 1} (${positions.length})`));
    result.tokens.forEach((token, position) => {
      const kept = alive.has(position);
      row.append(element('span', { class: `token ${kept ? 'kept' : 'dropped'}`, 'data-position': position }, token));
    });
    view.append(row);
  });
}

function showLatency(result) {
  $('latency').textContent = `${result.modelMs.toFixed(1)} ms (tokenising ${result.tokenizeMs.toFixed(1)} ms)`;
  const entry = element('li', {}, `keep_ratio ${result.keepRatio.toFixed(2)}: ${result.modelMs.toFixed(1)} ms, `
    + `${result.kept.at(-1).length} of ${result.tokens.length} tokens after the last layer`);
  $('history').prepend(entry);
  while ($('history').children.length > 6) $('history').lastChild.remove();
}

async function main() {
  const params = new URLSearchParams(location.search);
  const modelUrl = params.get('model') ?? 'model/';
  let model;
  try {
    model = await LatexportModel.load(modelUrl.endsWith('/') ? modelUrl : `${modelUrl}/`);
  } catch (error) {
    setStatus('error', `could not load the model from ${modelUrl}: ${error.message}`);
    return;
  }
  const meta = model.metadata;
  const layers = JSON.parse(meta.profile ?? '{}').num_layers ?? model.taps.length;
  $('model-info').textContent = `${meta.family} / ${meta.task}, ${layers} layers, from ${meta.source ?? modelUrl}; `
    + `default keep_ratio ${model.defaultKeepRatio}. Runs on this device with ONNX Runtime Web (WASM, `
    + `${globalThis.crossOriginIsolated ? 'multi-threaded' : 'one thread'}).`;
  const slider = $('keep-ratio');
  slider.value = String(model.defaultKeepRatio);
  $('keep-ratio-value').textContent = Number(slider.value).toFixed(2);

  // One call at a time; moving the slider during a call runs once more afterwards, on the latest values.
  let running = false;
  let pending = false;
  let calls = 0;
  async function update() {
    pending = true;
    if (running) return;
    running = true;
    while (pending) {
      pending = false;
      const text = $('text').value;
      const keepRatio = Number(slider.value);
      $('keep-ratio-value').textContent = keepRatio.toFixed(2);
      if (text.trim() === '') continue;
      try {
        setStatus('running', 'running');
        const result = await model.run(text, keepRatio);
        showScores(model, result);
        showKept(result);
        showLatency(result);
        window.latexportLast = result;
        calls += 1;
        status.dataset.calls = String(calls);
        status.dataset.keepRatio = String(keepRatio);
        setStatus('done', `${calls} call(s); last at keep_ratio ${keepRatio}${result.truncated ? ' (text truncated to the model maximum)' : ''}`);
      } catch (error) {
        setStatus('error', `the call failed: ${error.message}`);
      }
    }
    running = false;
  }
  slider.addEventListener('input', update);
  $('text').addEventListener('input', update);
  await update();
}

main();
