"""The web page at `/`: pick or drop an image, see the top-5 as bars (classifier) or the image with its boxes and
masks drawn and labelled (detector), beside the model card and the request's latency.

Self-contained (inline CSS and JavaScript, no CDN, no fonts to fetch: the machines are offline) and static: it
holds no data, and asks the API for the card and the predictions, sending the token when one is asked for.
Text from the API (class names, file names) is set with textContent only, never as HTML.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnet serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;font-size:18px}
main{display:flex;gap:20px;padding:20px;flex-wrap:wrap}
section{background:#fff;border-radius:8px;padding:16px;box-shadow:0 1px 3px #0002}
#left{flex:1 1 420px}#card{flex:0 1 320px;font-size:13px}
#drop{border:2px dashed #8a94a6;border-radius:8px;padding:24px;text-align:center;cursor:pointer}
#drop.over{background:#e8f0fe;border-color:#3a6ee8}
.row{display:flex;align-items:center;gap:8px;margin:6px 0}
.name{width:130px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{flex:1;background:#e6e8ee;border-radius:4px;height:18px}
.fill{background:#3a6ee8;height:18px;border-radius:4px}.row:first-child .fill{background:#1f9d55}
.pct{width:60px;text-align:right;font-variant-numeric:tabular-nums}
#top1{font-size:22px;font-weight:600;margin:8px 0}#error{color:#b3261e}
canvas{max-width:100%;image-rendering:pixelated;border:1px solid #ccd}
#preview{width:112px;height:auto;image-rendering:pixelated;border:1px solid #ccd}
dt{font-weight:600;margin-top:6px}dd{margin:0 0 0 8px;word-break:break-word}
#auth{display:none;margin:8px 0}
</style></head><body>
<header>resnet serve &mdash; <span id="model-name">loading&hellip;</span></header>
<main>
<section id="left">
 <div id="auth">Token: <input id="token" type="password" size="30"> <button id="save-token">use</button></div>
 <div id="drop">Drop an image here, or <label><u>choose a file</u>
  <input id="file" type="file" accept="image/*" style="display:none"></label></div>
 <div id="detector-controls" style="display:none">score threshold
  <input id="threshold" type="range" min="0" max="1" step="0.05" value="0.5"> <span id="threshold-value">0.50</span>
 </div>
 <p id="error"></p>
 <div id="result" style="display:none">
  <div class="row"><img id="preview" alt="the uploaded image"><div>
   <div id="top1"></div><div id="latency"></div></div></div>
  <div id="bars"></div><canvas id="canvas" style="display:none"></canvas>
  <p id="count"></p>
 </div>
</section>
<section id="card"><h3>Model</h3><dl id="card-list"></dl></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let card = null, last = null, lastImage = null;
const COLORS = ["#e6194b","#3cb44b","#4363d8","#f58231","#911eb4","#42d4f4","#f032e6","#bfef45","#fabed4","#469990"];

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = sessionStorage.getItem("resnet-token");
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}
async function api(path, options) {
  const r = await fetch(path, Object.assign({}, options, {headers: headers((options || {}).headers)}));
  if (r.status === 401) { $("auth").style.display = "block"; }
  const body = await r.json().catch(() => ({error: "HTTP " + r.status}));
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}
function showCard(c) {
  card = c;
  $("model-name").textContent = c.name + " (" + c.task + ")";
  const list = $("card-list"); list.textContent = "";
  const entries = [["task", c.task], ["classes", c.classes.length + ": " + c.classes.join(", ")],
    ["input", Object.entries(c.input).filter(e => e[1] !== null).map(e => e[0] + " " + e[1]).join("; ")],
    ["source", c.source], ["dataset", c.dataset || "-"],
    ["held-out", Object.keys(c.held_out).length ? Object.entries(c.held_out).map(e => e[0] + " " +
      (Number.isInteger(e[1]) ? String(e[1]) : typeof e[1] === "number" ? e[1].toFixed(4) : JSON.stringify(e[1])))
      .join("; ") : "not recorded"]];
  for (const [k, v] of entries) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    list.append(dt, dd);
  }
  $("detector-controls").style.display = c.task === "detection" ? "block" : "none";
}
async function loadCard() {
  try { showCard(await api("/v1/model")); $("error").textContent = ""; }
  catch (e) { $("error").textContent = e.message; setTimeout(loadCard, 2000); }
}
async function send(file) {
  $("error").textContent = "";
  const form = new FormData(); form.append("file", file, file.name);
  const t0 = performance.now();
  try {
    last = await api("/v1/predict?top_k=5", {method: "POST", body: form});
  } catch (e) { $("error").textContent = e.message; $("result").style.display = "none"; return; }
  const roundTrip = performance.now() - t0;
  $("latency").textContent = "latency " + roundTrip.toFixed(1) + " ms (server " + last.latency_ms.toFixed(1) + " ms)";
  const url = URL.createObjectURL(file);
  $("preview").src = url;
  lastImage = new Image();
  lastImage.onload = () => draw();
  lastImage.src = url;
  $("result").style.display = "block";
  if (last.task === "classification") showBars(last.predictions[0]);
}
function showBars(p) {
  $("canvas").style.display = "none"; $("bars").style.display = "block";
  $("top1").textContent = p.top[0]["class"];
  const bars = $("bars"); bars.textContent = "";
  for (const t of p.top) {
    const row = document.createElement("div"); row.className = "row";
    const name = document.createElement("span"); name.className = "name"; name.textContent = t["class"];
    const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div"); fill.className = "fill";
    fill.style.width = (100 * t.probability).toFixed(1) + "%"; bar.append(fill);
    const pct = document.createElement("span"); pct.className = "pct";
    pct.textContent = (100 * t.probability).toFixed(1) + "%";
    row.append(name, bar, pct); bars.append(row);
  }
  $("count").textContent = "";
}
function rleCounts(s) {  // COCO's compressed RLE string (pycocotools rleFrString)
  const counts = []; let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}
function paintMask(ctx, rle, color) {
  const [h, w] = rle.size, counts = rleCounts(rle.counts);
  const img = ctx.getImageData(0, 0, w, h), d = img.data;
  const r = parseInt(color.slice(1, 3), 16), g = parseInt(color.slice(3, 5), 16), b = parseInt(color.slice(5, 7), 16);
  let i = 0;
  counts.forEach((n, j) => {
    if (j % 2 === 1) for (let q = i; q < i + n; q++) {  // column-major: pixel q is (x = q / h, y = q % h)
      const o = 4 * ((q % h) * w + Math.floor(q / h));
      d[o] = (d[o] + r) >> 1; d[o + 1] = (d[o + 1] + g) >> 1; d[o + 2] = (d[o + 2] + b) >> 1;
    }
    i += n;
  });
  ctx.putImageData(img, 0, 0);
}
function draw() {
  if (!last || last.task !== "detection" || !lastImage) return;
  const threshold = +$("threshold").value;
  $("threshold-value").textContent = threshold.toFixed(2);
  const shown = last.predictions[0].detections.filter(d => d.score >= threshold);
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  $("bars").style.display = "none"; canvas.style.display = "block";
  canvas.width = lastImage.naturalWidth; canvas.height = lastImage.naturalHeight;
  ctx.drawImage(lastImage, 0, 0);
  shown.forEach((d, i) => { if (d.mask) paintMask(ctx, d.mask, COLORS[i % COLORS.length]); });
  ctx.font = "12px sans-serif"; ctx.lineWidth = 2;
  shown.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box, color = COLORS[i % COLORS.length], label = d["class"] + " " + d.score.toFixed(2);
    ctx.strokeStyle = color; ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = color; ctx.fillRect(x1, Math.max(0, y1 - 14), ctx.measureText(label).width + 4, 14);
    ctx.fillStyle = "#fff"; ctx.fillText(label, x1 + 2, Math.max(11, y1 - 3));
  });
  canvas.dataset.boxes = String(shown.length);
  $("top1").textContent = shown.length + " detection(s)";
  $("count").textContent = shown.map(d => d["class"] + " " + d.score.toFixed(2)).join(", ");
}
$("file").addEventListener("change", (e) => { if (e.target.files.length) send(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
$("threshold").addEventListener("input", draw);
$("save-token").addEventListener("click", () => {
  sessionStorage.setItem("resnet-token", $("token").value); $("auth").style.display = "none"; loadCard();
});
loadCard();
</script></body></html>
"""
