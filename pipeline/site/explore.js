// omniart explore: the map of a collection drawn on a canvas (an ImageData buffer: 100,000 points a frame), thumbnails
// from sprite atlases, details with nearest neighbours, search, lasso selection exported as CSV, the audit queue and
// the near-duplicate groups. Everything comes from data.js; nothing is fetched.
(function () {
  "use strict";
  const data = window.OMNIART_DATA;
  const n = data.count, xs = Float32Array.from(data.x), ys = Float32Array.from(data.y);
  const $ = (id) => document.getElementById(id);
  const map = $("map"), thumbs = $("thumbs"), lassoCanvas = $("lasso"), stage = $("stage");
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
    "#756bb1", "#636363"];
  const MISSING = [205, 205, 205];
  const state = { scale: 1, tx: 0, ty: 0, width: 1, height: 1, colour: null, colours: null, selected: -1,
    selection: [], highlight: null, hiddenCodes: new Set(), drawn: 0 };

  // ---- thumbnails -------------------------------------------------------------------------------------------
  const atlas = data.atlas || { files: [], cell: 64, per_side: 32 };
  const atlasImages = atlas.files.map((file) => { const image = new Image(); image.src = file; return image; });
  function drawThumb(context, index, x, y, side) {
    const perAtlas = atlas.per_side * atlas.per_side, image = atlasImages[Math.floor(index / perAtlas)];
    if (!image) return;
    const at = index % perAtlas, sx = (at % atlas.per_side) * atlas.cell, sy = Math.floor(at / atlas.per_side) * atlas.cell;
    const paint = () => context.drawImage(image, sx, sy, atlas.cell, atlas.cell, x, y, side, side);
    if (image.complete && image.naturalWidth) paint(); else image.addEventListener("load", paint, { once: true });
  }
  function thumbCanvas(index, side) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = side;
    canvas.title = data.keys[index];
    drawThumb(canvas.getContext("2d"), index, 0, 0, side);
    return canvas;
  }

  // ---- colours and legend -----------------------------------------------------------------------------------
  function hexRgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
  function hashRgb(code) {  // classes beyond the palette: a stable hue of their own
    const hue = (code * 137.508) % 360, s = 0.55, l = 0.5, c = (1 - Math.abs(2 * l - 1)) * s;
    const x = c * (1 - Math.abs(((hue / 60) % 2) - 1)), m = l - c / 2;
    const [r, g, b] = hue < 60 ? [c, x, 0] : hue < 120 ? [x, c, 0] : hue < 180 ? [0, c, x] : hue < 240 ? [0, x, c] : hue < 300 ? [x, 0, c] : [c, 0, x];
    return [r, g, b].map((v) => Math.round((v + m) * 255));
  }
  const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"].map(hexRgb);
  function ramp(t) {
    const f = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(f), VIRIDIS.length - 2), w = f - i;
    return VIRIDIS[i].map((v, k) => Math.round(v + w * (VIRIDIS[i + 1][k] - v)));
  }
  function colourBy(name) {
    state.colour = name;
    $("colour").value = name || "";
    state.hiddenCodes = new Set();
    const field = data.fields[name], colours = new Uint8Array(n * 3), legend = $("legend");
    legend.innerHTML = "";
    if (!field) {
      for (let i = 0; i < n; i++) colours.set([49, 130, 189], i * 3);
      legend.textContent = "No field: every image in one colour.";
    } else if (field.kind === "category") {
      const counts = new Map();
      field.codes.forEach((code) => counts.set(code, (counts.get(code) || 0) + 1));
      const order = [...counts.keys()].filter((c) => c >= 0).sort((a, b) => counts.get(b) - counts.get(a));
      const rgb = new Map(order.map((code, rank) => [code, rank < PALETTE.length ? hexRgb(PALETTE[rank]) : hashRgb(code)]));
      field.codes.forEach((code, i) => colours.set(code >= 0 ? rgb.get(code) : MISSING, i * 3));
      const rows = order.map((code) => [code, field.names[code] ?? String(code), counts.get(code), rgb.get(code)]);
      if (counts.has(-1)) rows.push([-1, "(none recorded)", counts.get(-1), MISSING]);
      for (const [code, label, count, colour] of rows) {  // every class, scrollable: hundreds of artists fit
        const row = document.createElement("div");
        row.className = "row";
        row.innerHTML = `<span class="swatch" style="background:rgb(${colour})"></span><span></span>`;
        row.lastChild.textContent = `${label} (${count})`;
        row.addEventListener("click", () => {  // a click hides or shows the class
          if (state.hiddenCodes.has(code)) state.hiddenCodes.delete(code); else state.hiddenCodes.add(code);
          row.classList.toggle("dim");
          draw();
        });
        legend.appendChild(row);
      }
    } else {
      const known = field.values.filter((v) => v !== null).sort((a, b) => a - b);
      const low = known.length ? known[Math.floor(0.02 * (known.length - 1))] : 0;
      const high = known.length ? known[Math.floor(0.98 * (known.length - 1))] : 1;
      field.values.forEach((v, i) => colours.set(v === null ? MISSING : ramp((v - low) / (high - low || 1)), i * 3));
      legend.innerHTML = `<div>${name}: ${low} to ${high} (2nd to 98th percentile); grey: none</div><div class="bar"></div>`;
    }
    state.colours = colours;
    draw();
  }

  // ---- view -------------------------------------------------------------------------------------------------
  function resize() {
    const ratio = window.devicePixelRatio || 1;
    state.width = Math.max(1, Math.round(stage.clientWidth * ratio));
    state.height = Math.max(1, Math.round(stage.clientHeight * ratio));
    for (const canvas of [map, thumbs, lassoCanvas]) { canvas.width = state.width; canvas.height = state.height; }
    fit();
  }
  function fit() {
    const side = Math.min(state.width, state.height) * 0.92;
    state.scale = side; state.tx = (state.width - side) / 2; state.ty = (state.height - side) / 2;
    draw();
  }
  function screenOf(i) { return [xs[i] * state.scale + state.tx, ys[i] * state.scale + state.ty]; }
  function visible(i) {
    if (state.colour && data.fields[state.colour] && data.fields[state.colour].kind === "category" &&
        state.hiddenCodes.has(data.fields[state.colour].codes[i])) return false;
    return true;
  }
  function draw() {
    if (!state.colours) return;
    const w = state.width, h = state.height, context = map.getContext("2d"), image = context.createImageData(w, h);
    const pixels = new Uint32Array(image.data.buffer);
    pixels.fill(0xffffffff);
    const radius = state.scale > 4000 ? 2 : 1;
    let drawn = 0;
    const paint = (i, dim) => {
      const px = Math.round(xs[i] * state.scale + state.tx), py = Math.round(ys[i] * state.scale + state.ty);
      if (px < -radius || py < -radius || px > w + radius || py > h + radius) return;
      let r = state.colours[i * 3], g = state.colours[i * 3 + 1], b = state.colours[i * 3 + 2];
      if (dim) { r = 235 - (235 - r) / 6; g = 235 - (235 - g) / 6; b = 235 - (235 - b) / 6; }
      const value = 0xff000000 | (b << 16) | (g << 8) | r;
      for (let dy = -radius; dy <= radius; dy++) {
        const y = py + dy;
        if (y < 0 || y >= h) continue;
        for (let dx = -radius; dx <= radius; dx++) {
          const x = px + dx;
          if (x >= 0 && x < w) pixels[y * w + x] = value;
        }
      }
      drawn++;
    };
    const lit = state.highlight;
    for (let i = 0; i < n; i++) if (visible(i) && !(lit && lit.has(i))) paint(i, lit !== null);
    if (lit) for (const i of lit) if (visible(i)) paint(i, false);
    context.putImageData(image, 0, 0);
    state.drawn = drawn;
    drawThumbnails();
    drawOverlay();
    $("status").textContent = `${n.toLocaleString()} images` + (state.selection.length ? `, ${state.selection.length} selected` : "");
  }
  function drawThumbnails() {  // zoomed in far enough: the images themselves, on their own canvas
    const context = thumbs.getContext("2d");
    context.clearRect(0, 0, state.width, state.height);
    const inView = [];
    for (let i = 0; i < n && inView.length <= 400; i++) {
      const [x, y] = screenOf(i);
      if (x >= 0 && y >= 0 && x < state.width && y < state.height && visible(i)) inView.push(i);
    }
    if (inView.length > 400 || !atlas.files.length) return;
    const side = Math.min(96, Math.max(24, state.scale / 60));
    for (const i of inView) {  // each image framed in its point's colour, so the colouring stays readable
      const [x, y] = screenOf(i), c = state.colours.subarray(i * 3, i * 3 + 3);
      context.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      context.fillRect(x - side / 2 - 3, y - side / 2 - 3, side + 6, side + 6);
      drawThumb(context, i, x - side / 2, y - side / 2, side);
    }
  }
  function drawOverlay() {
    const context = lassoCanvas.getContext("2d");
    context.clearRect(0, 0, state.width, state.height);
    if (state.selected >= 0) {
      const [x, y] = screenOf(state.selected);
      context.strokeStyle = "#000"; context.lineWidth = 2;
      context.beginPath(); context.arc(x, y, 7, 0, 2 * Math.PI); context.stroke();
    }
    if (drag && drag.lasso && drag.path.length > 1) {
      context.strokeStyle = "#d62728"; context.lineWidth = 1.5;
      context.beginPath(); drag.path.forEach(([x, y], k) => (k ? context.lineTo(x, y) : context.moveTo(x, y)));
      context.closePath(); context.stroke();
    }
  }

  // ---- picking: a grid over the unit square ----------------------------------------------------------------
  const GRID = 256, cells = new Map();
  for (let i = 0; i < n; i++) {
    const key = Math.min(GRID - 1, Math.floor(xs[i] * GRID)) * GRID + Math.min(GRID - 1, Math.floor(ys[i] * GRID));
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(i);
  }
  function nearest(px, py, within) {
    const wx = (px - state.tx) / state.scale, wy = (py - state.ty) / state.scale, reach = within / state.scale;
    let best = -1, bestDistance = within * within;
    const x0 = Math.floor((wx - reach) * GRID), x1 = Math.floor((wx + reach) * GRID);
    const y0 = Math.floor((wy - reach) * GRID), y1 = Math.floor((wy + reach) * GRID);
    for (let cx = Math.max(0, x0); cx <= Math.min(GRID - 1, x1); cx++)
      for (let cy = Math.max(0, y0); cy <= Math.min(GRID - 1, y1); cy++)
        for (const i of cells.get(cx * GRID + cy) || []) {
          if (!visible(i)) continue;
          const [sx, sy] = screenOf(i), d = (sx - px) ** 2 + (sy - py) ** 2;
          if (d < bestDistance) { bestDistance = d; best = i; }
        }
    return best;
  }

  // ---- details ---------------------------------------------------------------------------------------------
  function fieldText(name, i) {
    const field = data.fields[name];
    if (field.kind === "category") return field.codes[i] >= 0 ? field.names[field.codes[i]] : "";
    return field.values[i] === null ? "" : String(field.values[i]);
  }
  function select(i) {
    state.selected = i;
    const details = $("details");
    details.innerHTML = "";
    if (i < 0) { details.innerHTML = "<p>Click a point.</p>"; drawOverlay(); return; }
    details.appendChild(thumbCanvas(i, 192));
    const key = document.createElement("h3");
    key.id = "selected-key"; key.textContent = data.keys[i];
    details.appendChild(key);
    const table = document.createElement("table");
    for (const name of Object.keys(data.fields)) {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = fieldText(name, i);
    }
    const flags = (data.audit || []).filter((row) => row.key === data.keys[i]);
    for (const flag of flags) {
      const row = table.insertRow();
      row.insertCell().textContent = `audit: ${flag.task}`;
      row.insertCell().textContent = `recorded ${flag.recorded}, predicted ${flag.predicted} (score ${flag.score})`;
    }
    details.appendChild(table);
    const title = document.createElement("p");
    title.textContent = "Nearest neighbours";
    details.appendChild(title);
    const strip = document.createElement("div");
    strip.className = "neighbours";
    for (let k = 0; k < data.k; k++) {
      const j = data.neighbors[i * data.k + k], thumb = thumbCanvas(j, 64);
      thumb.addEventListener("click", () => select(j));
      strip.appendChild(thumb);
    }
    details.appendChild(strip);
    drawOverlay();
  }

  // ---- pan, zoom, click, lasso ------------------------------------------------------------------------------
  let drag = null;
  function local(event) {
    const box = map.getBoundingClientRect(), ratio = state.width / box.width;
    return [(event.clientX - box.left) * ratio, (event.clientY - box.top) * ratio];
  }
  stage.addEventListener("mousedown", (event) => {
    const [x, y] = local(event);
    drag = { x, y, moved: false, lasso: event.shiftKey, path: [[x, y]] };
  });
  window.addEventListener("mousemove", (event) => {
    const [x, y] = local(event);
    if (drag) {
      if (Math.abs(x - drag.x) + Math.abs(y - drag.y) > 3) drag.moved = true;
      if (drag.lasso) { drag.path.push([x, y]); drawOverlay(); }
      else if (drag.moved) { state.tx += x - drag.x; state.ty += y - drag.y; drag.x = x; drag.y = y; draw(); }
      return;
    }
    const tooltip = $("tooltip"), i = event.target === map || stage.contains(event.target) ? nearest(x, y, 8) : -1;
    if (i < 0) { tooltip.hidden = true; return; }
    tooltip.hidden = false;
    tooltip.innerHTML = "";
    tooltip.appendChild(thumbCanvas(i, 96));
    const text = document.createElement("div");
    text.textContent = data.keys[i] + (state.colour && data.fields[state.colour] ? ` · ${fieldText(state.colour, i)}` : "");
    tooltip.appendChild(text);
    const box = stage.getBoundingClientRect();
    tooltip.style.left = `${event.clientX - box.left + 12}px`;
    tooltip.style.top = `${event.clientY - box.top + 12}px`;
  });
  window.addEventListener("mouseup", (event) => {
    if (!drag) return;
    const finished = drag;
    drag = null;
    if (finished.lasso && finished.path.length > 2) { lassoSelect(finished.path); return; }
    if (!finished.moved) { const [x, y] = local(event); select(nearest(x, y, 10)); }
  });
  stage.addEventListener("wheel", (event) => {
    event.preventDefault();
    const [x, y] = local(event), factor = Math.exp(-event.deltaY * 0.0015);
    state.tx = x - (x - state.tx) * factor; state.ty = y - (y - state.ty) * factor; state.scale *= factor;
    draw();
  }, { passive: false });
  window.addEventListener("resize", resize);

  function inside(path, x, y) {  // even-odd rule
    let hit = false;
    for (let a = 0, b = path.length - 1; a < path.length; b = a++) {
      const [xa, ya] = path[a], [xb, yb] = path[b];
      if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) hit = !hit;
    }
    return hit;
  }
  function lassoSelect(path) {
    state.selection = [];
    for (let i = 0; i < n; i++) { const [x, y] = screenOf(i); if (visible(i) && inside(path, x, y)) state.selection.push(i); }
    state.highlight = state.selection.length ? new Set(state.selection) : null;
    $("selection-keys").value = state.selection.map((i) => data.keys[i]).join("\n");
    $("export").disabled = !state.selection.length;
    draw();
  }
  function selectionCsv() {
    const names = Object.keys(data.fields), quote = (text) => `"${String(text).replace(/"/g, '""')}"`;
    const lines = [["key", ...names].map(quote).join(",")];
    for (const i of state.selection) lines.push([data.keys[i], ...names.map((name) => fieldText(name, i))].map(quote).join(","));
    return lines.join("\n") + "\n";
  }
  $("export").addEventListener("click", () => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([selectionCsv()], { type: "text/csv" }));
    link.download = "selection.csv";
    link.click();
  });

  // ---- search ----------------------------------------------------------------------------------------------
  $("search").addEventListener("input", (event) => {
    const query = event.target.value.trim().toLowerCase();
    if (!query) { state.highlight = state.selection.length ? new Set(state.selection) : null; draw(); return; }
    const hits = new Set(), categories = Object.values(data.fields).filter((field) => field.kind === "category")
      .map((field) => [field.codes, field.names.map((name) => name.toLowerCase().includes(query))]);
    for (let i = 0; i < n; i++) {  // a key, or any class name of the record (artist, type, material, ...)
      if (data.keys[i].toLowerCase().includes(query) || categories.some(([codes, hit]) => codes[i] >= 0 && hit[codes[i]]))
        hits.add(i);
    }
    state.highlight = hits;
    draw();
  });
  $("search").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !state.highlight || !state.highlight.size) return;
    const first = state.highlight.values().next().value, [x, y] = screenOf(first);
    state.tx += state.width / 2 - x; state.ty += state.height / 2 - y;
    draw(); select(first);
  });

  // ---- pages -----------------------------------------------------------------------------------------------
  function show(page) {
    document.querySelectorAll(".page").forEach((el) => el.classList.toggle("active", el.id === `page-${page}`));
    document.querySelectorAll("nav button").forEach((el) => el.classList.toggle("active", el.dataset.page === page));
    if (page === "map") resize();
  }
  document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => show(button.dataset.page)));
  const index = new Map(data.keys.map((key, i) => [key, i]));
  function auditPage() {
    const table = $("audit-table");
    if (!data.audit || !data.audit.length) { table.outerHTML = "<p>No audit: build the site with --audit AUDIT_FOLDER (omni-heads audit).</p>"; return; }
    table.innerHTML = "<tr><th></th><th>key</th><th>task</th><th>recorded</th><th>predicted</th><th>score</th></tr>";
    for (const row of data.audit) {
      const line = table.insertRow(), i = index.get(row.key);
      line.insertCell().appendChild(thumbCanvas(i, 64));
      for (const name of ["key", "task", "recorded", "predicted", "score"]) line.insertCell().textContent = row[name];
      line.addEventListener("click", () => { show("map"); select(i); });
    }
  }
  function duplicatesPage() {
    const holder = $("duplicate-groups");
    if (!data.duplicates.length) { holder.textContent = "No near-duplicate images at this threshold."; return; }
    for (const group of data.duplicates) {
      const line = document.createElement("div");
      line.className = "group";
      for (const i of group) {
        const figure = document.createElement("figure"), caption = document.createElement("figcaption");
        figure.appendChild(thumbCanvas(i, 96));
        caption.textContent = data.keys[i];
        figure.appendChild(caption);
        figure.addEventListener("click", () => { show("map"); select(i); });
        line.appendChild(figure);
      }
      holder.appendChild(line);
    }
  }

  // ---- start -----------------------------------------------------------------------------------------------
  const chooser = $("colour");
  for (const name of ["(none)", ...Object.keys(data.fields)]) {
    const option = document.createElement("option");
    option.value = name === "(none)" ? "" : name; option.textContent = name;
    chooser.appendChild(option);
  }
  chooser.addEventListener("change", () => colourBy(chooser.value));
  const first = Object.keys(data.fields)[0] || "";
  chooser.value = first;
  colourBy(first);
  resize();
  auditPage();
  duplicatesPage();
  // what tests and scripts drive
  window.omniart = {
    count: n, state, colourBy, select, screenOf, draw, fit,
    drawn: () => state.drawn,
    selectedKeys: () => state.selection.map((i) => data.keys[i]),
    selectionCsv,
    canvasScale: () => state.width / map.getBoundingClientRect().width,
  };
})();
