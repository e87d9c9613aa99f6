"use strict";
// depthstream's live view: one panel per stream. Messages are described in pipeline/web_sink.py:
// text (JSON): hello, end, stopped; binary: u32 n | JSON (n bytes) | [uint16 depth] |
// [uint8 colour levels of the depth] | JPEG (the picture, or with levels the input beside them).
// After drawing a frame the page acknowledges it; the server then sends that stream's newest.
// The depth values come only for the streams the pointer is over (the page asks for them).

const state = {
  streams: {}, colours: null, lut: null, status: "connecting", stopped: false, ws: null,
};
window.depthstream = state; // for tests and for debugging in the console

const statusEl = document.getElementById("status");

// Tells whoever listens (tests, extensions) what changed: {type: "status" | "frame", ...}.
function announce(detail) {
  window.dispatchEvent(new CustomEvent("depthstream", { detail }));
}

function setStatus(text, cls) {
  statusEl.textContent = text;
  statusEl.className = cls;
  state.status = text;
  announce({ type: "status", status: text });
}

function panel(name) {
  if (state.streams[name]) return state.streams[name];
  const template = document.getElementById("stream-template");
  const node = template.content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.querySelector(".name").textContent = name;
  document.getElementById("streams").appendChild(node);
  const s = {
    name, node, canvas: node.querySelector(".view"), meta: null, depth: null, shown: 0,
    pointer: null, range: null, queue: Promise.resolve(), wantsDepth: false,
  };
  s.ctx = s.canvas.getContext("2d");
  s.canvas.addEventListener("mousemove", (e) => {
    const r = s.canvas.getBoundingClientRect();
    const at = (client, start, size, pixels) => // whole CSS pixels: keep it on the image
      Math.min(pixels - 1, Math.max(0, Math.floor(((client - start) * pixels) / size)));
    s.pointer = [
      at(e.clientX, r.left, r.width, s.canvas.width),
      at(e.clientY, r.top, r.height, s.canvas.height),
    ];
    wantDepth(s, true);
    showValue(s);
  });
  s.canvas.addEventListener("mouseleave", () => {
    s.pointer = null;
    wantDepth(s, false);
    showValue(s);
  });
  state.streams[name] = s;
  return s;
}

// Tells the server which streams' depth values to send: those the pointer is over.
function wantDepth(s, on) {
  if (s.wantsDepth === on) return;
  s.wantsDepth = on;
  sendWants();
}

function sendWants() {
  const names = Object.values(state.streams).filter((t) => t.wantsDepth).map((t) => t.name);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ depth: names }));
  }
}
state.wantDepth = (name, on) => wantDepth(panel(name), on);

// The depth at view pixel (x, y) of the frame shown: {x, y, metres} in depth pixels (metres
// null where there is no depth), or null outside the image or while its values are on their
// way. Over the input (side by side) it is the depth of the same pixel: both have its size.
function depthAt(name, x, y) {
  const s = state.streams[name];
  if (!s || !s.meta || !s.depth) return null;
  const d = s.meta.depth;
  const u = x >= d.x ? x - d.x : x;
  if (u < 0 || u >= d.width || y < 0 || y >= d.height) return null;
  const v = s.depth[y * d.width + u];
  return { x: u, y, metres: v === 0 ? null : v / d.scale };
}
state.depthAt = depthAt;

function showValue(s) {
  const out = s.node.querySelector(".value");
  const at = s.pointer && depthAt(s.name, s.pointer[0], s.pointer[1]);
  if (s.pointer && s.meta && !s.depth) {
    out.textContent = state.stopped ? "–" : "…"; // on their way, unless the pipeline is gone
  }
  else if (!at) out.textContent = "–";
  else if (at.metres === null) out.textContent = `no depth at (${at.x}, ${at.y})`;
  else out.textContent = `${at.metres.toFixed(2)} m at (${at.x}, ${at.y})`;
}

function drawBar(s, range) {
  if (!state.colours || (s.range && s.range[0] === range[0] && s.range[1] === range[1])) return;
  s.range = range;
  const bar = s.node.querySelector(".colours");
  const ctx = bar.getContext("2d");
  const img = ctx.createImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = state.colours[255 - i]; // left: near (level 255), right: far (level 0)
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  const ticks = s.node.querySelector(".ticks");
  ticks.replaceChildren();
  const [near, far] = range;
  const step = (far - near) / 4;
  const decimals = step < 1 ? 2 : step < 10 ? 1 : 0; // 2.5 m steps: one decimal
  for (let k = 0; k <= 4; k++) {
    const span = document.createElement("span");
    span.style.left = `${25 * k}%`;
    span.textContent = `${(near + step * k).toFixed(decimals)} m`;
    ticks.appendChild(span);
  }
}

function header(buf) {
  const n = new DataView(buf).getUint32(0, true);
  return [n, JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)))];
}

// The depth's colours from its levels: the colormap's entry per pixel, into an image kept per
// stream (RGBA bytes; the lookup table holds each colour's four bytes as one 32-bit word).
function coloured(s, levels, width, height) {
  if (!s.image || s.image.width !== width || s.image.height !== height) {
    s.image = s.ctx.createImageData(width, height);
    s.pixels = new Uint32Array(s.image.data.buffer);
  }
  const lut = state.lut;
  const px = s.pixels;
  for (let i = 0; i < levels.length; i++) px[i] = lut[levels[i]];
  return s.image;
}

async function showFrame(s, buf, n, meta) {
  const d = meta.depth;
  const size = d.width * d.height;
  let at = 4 + n;
  const depth = d.values ? new Uint16Array(buf, at, size) : null; // little-endian, as all are
  at += d.values ? 2 * size : 0;
  const levels = meta.levels ? new Uint8Array(buf, at, size) : null;
  at += meta.levels ? size : 0;
  const jpeg = new Uint8Array(buf, at, meta.jpeg);
  const blob = meta.jpeg ? new Blob([jpeg], { type: "image/jpeg" }) : null;
  const bitmap = blob ? await createImageBitmap(blob) : null;
  const [h, w] = meta.view;
  if (s.canvas.width !== w || s.canvas.height !== h) {
    s.canvas.width = w;
    s.canvas.height = h;
  }
  if (bitmap) {
    s.ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
  }
  if (levels) s.ctx.putImageData(coloured(s, levels, d.width, d.height), d.x, 0);
  s.meta = meta;
  s.depth = depth;
  s.shown += 1;
  s.canvas.dataset.index = meta.index;
  drawBar(s, meta.range);
  s.node.querySelector(".stats").textContent =
    `frame ${meta.index} · ${meta.fps.toFixed(1)} fps · latency ${meta.latency_ms.toFixed(0)} ms` +
    ` · drops ${meta.drops}`;
  showValue(s);
  if (state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify({ ack: meta.stream }));
  announce({ type: "frame", stream: meta.stream, index: meta.index });
}

function onText(msg) {
  if (msg.type === "hello") {
    state.colours = msg.colormap;
    const bytes = new Uint8Array(4 * 256);
    msg.colormap.forEach(([r, g, b], level) => bytes.set([r, g, b, 255], 4 * level));
    state.lut = new Uint32Array(bytes.buffer);
    msg.streams.forEach(panel);
    setStatus("live", "live");
  } else if (msg.type === "end") {
    panel(msg.stream).node.querySelector(".ended").hidden = false;
  } else if (msg.type === "stopped") {
    state.stopped = true;
    setStatus(`stopped: ${msg.reason}`, "stopped");
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = sendWants; // a pointer over a stream before the connection was open
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      onText(JSON.parse(e.data));
      return;
    }
    // Frames of one stream are drawn in the order they came (decoding is asynchronous).
    const [n, meta] = header(e.data);
    const s = panel(meta.stream);
    s.queue = s.queue.then(() => showFrame(s, e.data, n, meta)).catch((err) => console.error(err));
  };
  ws.onclose = () => {
    if (!state.stopped) {
      state.stopped = true;
      setStatus("stopped: the connection to the pipeline was lost", "stopped");
    }
  };
}

connect();
