// The playground: sends an image to /explain, shows the predictions, and draws each class's
// map over the photograph in the browser, so that the heatmap weight and the colour map change
// with no new request. Plain JavaScript, no library.
'use strict';

const $ = (id) => document.getElementById(id);
const METHODS = ['gradcam', 'hirescam', 'gradcam++', 'xgradcam', 'layercam'];
const state = {
  image: null, // a File or Blob
  json: null, // the last main answer
  base: null, // ImageData: the photograph at the overlay's size
  views: [], // one per drawn map: { canvas, up, mw, mh, raw, caption }
  tables: null, // colour tables from the server, 256 RGB colours each
  requests: 0, // calls made to /explain
};

// The API key lives in this tab's session storage only.
$('key').value = sessionStorage.getItem('gradcam-key') || '';
$('key').addEventListener('input', () => sessionStorage.setItem('gradcam-key', $('key').value));

fetch('/ui/colormaps.json').then((r) => r.json()).then((t) => { state.tables = t; });
fetch('/labels').then((r) => (r.ok ? r.json() : null)).then((body) => {
  if (!body || !body.labels.length) return;
  const list = $('labels');
  for (const l of body.labels) {
    const o = document.createElement('option');
    o.value = `${l.index} ${l.label}`;
    list.appendChild(o);
  }
  // The example is one of this model's classes: 281 (ImageNet's tabby) or its last.
  const e = body.labels[Math.min(281, body.labels.length - 1)];
  $('class').placeholder = `e.g. ${e.index} ${e.label}`;
});

/// "resnet50" as people write it: "a ResNet-50"; other names as they are.
function architectureName(a) {
  let m = /^resnet(\d+)$/.exec(a);
  if (m) return `a ResNet-${m[1]}`;
  m = /^resnext(\d+)_(\w+)$/.exec(a);
  if (m) return `a ResNeXt-${m[1]} ${m[2]}`;
  m = /^wide_resnet(\d+)_(\d+)$/.exec(a);
  if (m) return `a Wide ResNet-${m[1]}-${m[2]}`;
  return a;
}

// What the page says about the model comes from the model the server loaded.
fetch('/info').then((r) => (r.ok ? r.json() : null)).then((info) => {
  if (!info) return;
  $('model-name').textContent = architectureName(info.architecture);
  const side = info.input.size;
  const resize = info.input.resize === 'center-crop'
    ? `shorter side to ${Math.floor(side / 0.875)}, centre ${side} x ${side}`
    : `squashed to ${side} x ${side}`;
  const labels = info.labels === 'imagenet' ? "ImageNet's" : info.labels === 'generic' ? 'numbered' : `from ${info.labels.split('/').pop()}`;
  $('model-facts').textContent = `${info.model}: ${info.classes} classes (names ${labels}); `
    + `input ${resize}; ${info.precision} on ${info.device}`;
});

function choose(file) {
  if (!file) return;
  state.image = file;
  $('url').value = '';
  $('chosen').textContent = `Chosen: ${file.name || 'pasted image'} (${file.size} bytes)`;
}
$('file').addEventListener('change', (e) => choose(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  choose(e.dataTransfer.files[0]);
});
document.addEventListener('paste', (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith('image/'));
  if (item) choose(item.getAsFile());
});
$('url').addEventListener('input', () => {
  if ($('url').value) $('chosen').textContent = 'The server will fetch the URL.';
});

function showProblem(title, detail) {
  $('problem-title').textContent = title;
  $('problem-detail').textContent = detail;
  $('problem').hidden = false;
}

/// The class the form asks for, or null: the leading number of "281 tabby".
function chosenClass() {
  const m = /^\s*(\d{1,3})\b/.exec($('class').value);
  return m ? m[1] : null;
}

/// One call to /explain with `params`; the parsed answer, or null after showing the problem.
/// `marks`, when given, gets the times at which the answer's headers and its whole body had
/// arrived and when its JSON was parsed (performance.now()).
async function call(params, marks) {
  const headers = { Accept: 'application/json' };
  if ($('key').value) headers.Authorization = `Bearer ${$('key').value}`;
  let body;
  const url = $('url').value.trim();
  if (url) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify({ url });
  } else {
    body = new FormData();
    body.append('image', state.image, state.image.name || 'pasted');
  }
  state.requests += 1;
  document.body.dataset.requests = state.requests;
  let res;
  try {
    res = await fetch(`/explain?${params}`, { method: 'POST', headers, body });
  } catch (e) {
    showProblem('No answer', `The server could not be reached: ${e.message}`);
    return null;
  }
  if (res.ok) {
    const m = marks || {};
    m.headers = performance.now();
    const text = await res.text();
    m.body = performance.now();
    const json = JSON.parse(text);
    m.parsed = performance.now();
    return json;
  }
  let problem = null;
  try { problem = await res.json(); } catch (_) { /* not a problem document */ }
  showProblem(
    (problem && problem.title) || `HTTP ${res.status}`,
    (problem && problem.detail) || res.statusText,
  );
  return null;
}

/// The photograph comes back as an overlay with alpha 0 (JPEG): the same size and resizing
/// as the server's overlays, for a file and for a URL alike.
function params(extra) {
  const p = new URLSearchParams({
    method: $('method').value,
    layer: $('layer').value,
    alpha: '0',
    overlay_format: 'jpeg',
    overlay_quality: '90',
  });
  const cls = chosenClass();
  if (cls !== null) p.set('class', cls); else p.set('top_k', $('topk').value || '1');
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p;
}

async function decodeBase(b64) {
  const img = new Image();
  img.src = `data:image/jpeg;base64,${b64}`;
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height);
}

/// Bilinear upsampling with pixel centres aligned, as the server draws its overlays.
function axis(nIn, nOut) {
  const scale = nIn / nOut;
  const out = [];
  for (let o = 0; o < nOut; o += 1) {
    const src = Math.max((o + 0.5) * scale - 0.5, 0);
    const i0 = Math.min(Math.floor(src), nIn - 1);
    out.push([i0, Math.min(i0 + 1, nIn - 1), src - i0]);
  }
  return out;
}
function upsample(map, w, h, outW, outH) {
  const xs = axis(w, outW);
  const rows = [];
  for (let y = 0; y < h; y += 1) {
    const r = new Float32Array(outW);
    xs.forEach(([x0, x1, f], i) => { r[i] = map[y * w + x0] + (map[y * w + x1] - map[y * w + x0]) * f; });
    rows.push(r);
  }
  const out = new Float32Array(outW * outH);
  axis(h, outH).forEach(([y0, y1, f], y) => {
    for (let x = 0; x < outW; x += 1) out[y * outW + x] = rows[y0][x] + (rows[y1][x] - rows[y0][x]) * f;
  });
  return out;
}

/// Blends the colour-mapped map onto the photograph, in the server's fixed-point arithmetic.
function draw(view) {
  const base = state.base;
  const ctx = view.canvas.getContext('2d');
  const out = ctx.createImageData(base.width, base.height);
  const a = Math.floor(Number($('alpha').value) * 256 + 0.5);
  const lut = state.tables[$('colormap').value];
  const src = base.data;
  const dst = out.data;
  for (let i = 0; i < view.up.length; i += 1) {
    const level = Math.min(255, Math.max(0, Math.floor(view.up[i] * 255 + 0.5)));
    const c = lut[level];
    const o = i * 4;
    dst[o] = (src[o] * (256 - a) + c[0] * a + 128) >> 8;
    dst[o + 1] = (src[o + 1] * (256 - a) + c[1] * a + 128) >> 8;
    dst[o + 2] = (src[o + 2] * (256 - a) + c[2] * a + 128) >> 8;
    dst[o + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}
function redraw() {
  $('alpha-value').textContent = Number($('alpha').value).toFixed(2);
  state.views.forEach(draw);
}
$('alpha').addEventListener('input', redraw);
$('colormap').addEventListener('change', redraw);

/// Shows the keyboard cursor on the view's current map cell and says the map's value there.
function showCell(view) {
  const { x, y } = view.cell;
  const s = view.cursor.style;
  s.left = `${(x * 100) / view.mw}%`;
  s.top = `${(y * 100) / view.mh}%`;
  s.width = `${100 / view.mw}%`;
  s.height = `${100 / view.mh}%`;
  view.cursor.hidden = false;
  const i = y * view.mw + x;
  $('pointer').textContent = `${view.caption}, cell (${x}, ${y}) of ${view.mw}x${view.mh}:`
    + ` map ${view.norm[i].toFixed(3)} (normalised), raw ${view.raw[i].toPrecision(4)}`;
}

const POINTER_HINT = $('pointer').textContent;
const STEPS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

/// A figure with a canvas for one explanation, appended to `where`. The canvas takes the
/// keyboard focus, and the arrow keys move a cursor over the map cell by cell, so that the map
/// can be read without a pointer.
function addView(where, e, caption) {
  const fig = document.createElement('figure');
  const frame = document.createElement('div');
  frame.className = 'frame';
  const canvas = document.createElement('canvas');
  canvas.width = state.base.width;
  canvas.height = state.base.height;
  canvas.tabIndex = 0;
  // "application": screen readers pass the arrow keys through to the page.
  canvas.setAttribute('role', 'application');
  canvas.setAttribute('aria-roledescription', 'heatmap');
  canvas.setAttribute('aria-label', `${caption}: the map over the photograph; arrow keys read it cell by cell`);
  canvas.setAttribute('aria-describedby', 'pointer');
  const cursor = document.createElement('div');
  cursor.className = 'cursor';
  cursor.hidden = true;
  frame.append(canvas, cursor);
  const cap = document.createElement('figcaption');
  cap.textContent = caption;
  fig.append(frame, cap);
  where.appendChild(fig);
  const mw = e.heatmap.width;
  const mh = e.heatmap.height;
  const view = {
    canvas,
    cursor,
    caption,
    mw,
    mh,
    raw: e.heatmap.data,
    norm: e.normalized,
    cell: { x: Math.floor(mw / 2), y: Math.floor(mh / 2) },
    up: upsample(e.normalized, mw, mh, canvas.width, canvas.height),
  };
  canvas.addEventListener('mousemove', (ev) => {
    const x = Math.min(canvas.width - 1, Math.floor((ev.offsetX * canvas.width) / canvas.clientWidth));
    const y = Math.min(canvas.height - 1, Math.floor((ev.offsetY * canvas.height) / canvas.clientHeight));
    view.cell = { x: Math.floor((x * mw) / canvas.width), y: Math.floor((y * mh) / canvas.height) };
    const cell = view.cell.y * mw + view.cell.x;
    $('pointer').textContent = `${caption} at (${x}, ${y}), cell (${view.cell.x}, ${view.cell.y}):`
      + ` map ${view.up[y * canvas.width + x].toFixed(3)} (normalised), raw ${view.raw[cell].toPrecision(4)}`;
  });
  canvas.addEventListener('focus', () => showCell(view));
  canvas.addEventListener('blur', () => { cursor.hidden = true; });
  canvas.addEventListener('keydown', (ev) => {
    const step = STEPS[ev.key];
    if (!step) return;
    ev.preventDefault(); // the arrows move the cursor, not the page
    view.cell = {
      x: Math.min(mw - 1, Math.max(0, view.cell.x + step[0])),
      y: Math.min(mh - 1, Math.max(0, view.cell.y + step[1])),
    };
    showCell(view);
  });
  state.views.push(view);
  draw(view);
  return view;
}

function caption(e) {
  return `${e.label} (${e.class_index}), ${e.method} at ${e.layer}`;
}

function showTimings(t, split) {
  const parts = ['decode_ms', 'fetch_ms', 'queue_ms', 'inference_ms', 'render_ms', 'total_ms']
    .filter((k) => t[k] !== undefined)
    .map((k) => `${k.replace('_ms', '')} ${t[k].toFixed(1)} ms`);
  $('timings').textContent = `Server: ${parts.join(', ')}, batch of ${t.batch_size}.`
    + (split === undefined ? '' : ` Upload to overlay in this browser: ${split.total_ms.toFixed(0)} ms`
      + ` (server ${split.server_ms.toFixed(0)}, upload and download ${split.network_ms.toFixed(0)},`
      + ` reading the answer ${split.read_ms.toFixed(0)}, drawing ${split.draw_ms.toFixed(0)}).`);
}

async function explain(ev) {
  ev.preventDefault();
  $('problem').hidden = true;
  if (!state.image && !$('url').value.trim()) {
    showProblem('No image', 'Choose, drop or paste an image, or give a URL.');
    return;
  }
  if (!state.tables) state.tables = await (await fetch('/ui/colormaps.json')).json();
  const button = $('explain');
  button.disabled = true;
  document.body.setAttribute('aria-busy', 'true');
  const started = performance.now();
  const marks = {};
  try {
    const body = await call(params(), marks);
    if (!body) return;
    state.json = body;
    state.base = await decodeBase(body.explanations[0].overlay_jpeg);
    const decoded = performance.now();
    state.views = [];
    $('overlays').replaceChildren();
    $('comparison').replaceChildren();
    $('pointer').textContent = POINTER_HINT; // what it said was about a picture now gone
    const list = $('predictions');
    list.replaceChildren();
    for (const p of body.predictions) {
      const li = document.createElement('li');
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.style.width = `${Math.round(p.probability * 200)}px`;
      li.textContent = `${p.label} (${p.index}): ${(p.probability * 100).toFixed(1)}%`;
      li.appendChild(bar);
      list.appendChild(li);
    }
    for (const e of body.explanations) addView($('overlays'), e, caption(e));
    $('result').hidden = false;
    const done = performance.now();
    // Where the time from upload to overlay went: the server's own total, the rest of the
    // round trip (sending the photograph, receiving the answer), parsing the JSON and decoding
    // the photograph it carries, and drawing (upsampling, blending, painting every canvas).
    const server = body.timings.total_ms;
    const split = {
      total_ms: done - started,
      server_ms: server,
      network_ms: Math.max(0, marks.body - started - server),
      read_ms: decoded - marks.body,
      draw_ms: done - decoded,
    };
    document.body.dataset.uploadToOverlayMs = split.total_ms.toFixed(1);
    document.body.dataset.uploadToOverlay = JSON.stringify(split);
    showTimings(body.timings, split);
  } finally {
    button.disabled = false;
    document.body.removeAttribute('aria-busy');
  }
}
$('request').addEventListener('submit', explain);

/// One request per variant, for the first explained class, drawn side by side.
async function compare(variants) {
  if (!state.json) return;
  $('problem').hidden = true;
  const cls = String(state.json.explanations[0].class_index);
  state.views = state.views.filter((v) => !$('comparison').contains(v.canvas));
  $('comparison').replaceChildren();
  for (const extra of variants) {
    const body = await call(params({ class: cls, overlay: 'false', ...extra }));
    if (!body) return;
    const e = body.explanations[0];
    addView($('comparison'), e, `${e.method} at ${e.layer}`);
  }
}
$('compare-methods').addEventListener('click', () => compare(METHODS.map((m) => ({ method: m }))));
$('compare-layers').addEventListener('click', () => compare(['layer3', 'layer4'].map((l) => ({ layer: l }))));

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
$('download-png').addEventListener('click', () => {
  if (state.views[0]) state.views[0].canvas.toBlob((b) => download(b, 'overlay.png'), 'image/png');
});
$('download-json').addEventListener('click', () => {
  if (state.json) download(new Blob([JSON.stringify(state.json, null, 1)], { type: 'application/json' }), 'explanation.json');
});
