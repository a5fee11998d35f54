"use strict";
(function () {
  // Every user string goes through textContent or an attribute: never parsed as HTML.
  const ROWS = JSON.parse(document.getElementById("report-data").textContent);
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  const state = { key: "order", dir: 1, page: 0, size: 50, shown: ROWS };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function errRank(r) { return r.e !== undefined ? 4 : (r.wc ? 2 : 0) + (r.bm ? 1 : 0); }
  const KEYS = {
    order: (r) => r.i,
    score: (r) => (r.p && r.p.length ? r.p[0][2] : null),
    iou: (r) => (r.u === undefined ? null : r.u),
    error: (r) => errRank(r),
  };
  function boxes(svg, r, rank) {
    // predicted boxes of class rank `rank` (green) and GT boxes (red, dashed), inclusive pixels
    if (!r.w || !r.h) return;
    svg.setAttribute("viewBox", "0 0 " + r.w + " " + r.h);
    svg.setAttribute("preserveAspectRatio", "none");
    const add = (b, cls) => {
      const q = document.createElementNS(SVGNS, "rect");
      q.setAttribute("x", b[0]); q.setAttribute("y", b[1]);
      q.setAttribute("width", b[2] - b[0] + 1); q.setAttribute("height", b[3] - b[1] + 1);
      q.setAttribute("class", cls);
      q.setAttribute("vector-effect", "non-scaling-stroke");
      q.setAttribute("stroke-width", "2");
      svg.appendChild(q);
    };
    for (const b of r.b || []) if (b[0] === rank) add(b.slice(1), "pred");
    for (const b of r.gb || []) add(b, "gt");
  }
  function thumb(src, full, r, rank, caption) {
    const box = el("div", "thumb");
    const img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = caption;
    if (src) img.src = src;
    if (r.w && r.h) {
      const s = Math.min(1, THUMB / Math.max(r.w, r.h));
      img.width = Math.max(1, Math.round(r.w * s)); img.height = Math.max(1, Math.round(r.h * s));
    } else { img.width = THUMB; }
    box.appendChild(img);
    const svg = document.createElementNS(SVGNS, "svg");
    boxes(svg, r, rank);
    box.appendChild(svg);
    if (full) {
      box.dataset.full = full;
      box.addEventListener("click", () => openViewer(full, r, rank, caption));
    }
    return box;
  }
  function row(r) {
    const tr = el("tr", "row");
    tr.dataset.i = r.i;
    tr.appendChild(el("td", "idx", r.i + 1));
    const td = el("td");
    const t0 = r.e === undefined ? thumb(r.t, r.f || (r.o && r.o[0] && r.o[0][3]), r, 1, r.n) : null;
    if (t0) { t0.classList.add("main"); td.appendChild(t0); }
    td.appendChild(el("div", "name", r.n));
    tr.appendChild(td);
    const tp = el("td");
    if (r.e !== undefined) tp.appendChild(el("div", "err", "failed: " + r.e));
    const ol = el("ol", "preds");
    for (const p of r.p || []) ol.appendChild(el("li", null, p[0] + " (" + Number(p[2]).toFixed(3) + ")"));
    tp.appendChild(ol);
    if (r.gl) tp.appendChild(el("div", "gt", "GT: " + r.gl.join(", ")));
    tr.appendChild(tp);
    const to = el("td");
    const ovs = el("div", "ovs");
    for (const o of r.o || []) {
      const f = el("figure", "ov");
      f.style.margin = "0";
      f.appendChild(thumb(o[2], o[3], r, o[0], o[0] + ". " + o[1] + " · " + r.n));
      f.appendChild(el("figcaption", null, o[0] + ". " + o[1]));
      ovs.appendChild(f);
    }
    to.appendChild(ovs);
    tr.appendChild(to);
    const tu = el("td", "iou", r.u === undefined ? "" : r.u.toFixed(3));
    if (r.gu !== undefined) tu.appendChild(el("div", "gk", "GT-known " + r.gu.toFixed(3)));
    tr.appendChild(tu);
    const te = el("td", "flags");
    if (r.e !== undefined) te.appendChild(el("span", "tag e", "failed to decode"));
    if (r.wc) te.appendChild(el("span", "tag wc", "wrong class"));
    if (r.bm) te.appendChild(el("span", "tag bm", "box missed"));
    tr.appendChild(te);
    return tr;
  }
  function apply() {
    const cls = $("f-class").value, wrong = $("f-wrong").checked, missed = $("f-missed").checked,
      failed = $("f-failed").checked, name = $("f-name").value.toLowerCase();
    const any = wrong || missed || failed;
    let rows = ROWS.filter((r) => {
      if (cls && !((r.p && r.p.length && r.p[0][0] === cls) || (r.gl && r.gl.includes(cls)))) return false;
      if (name && !r.n.toLowerCase().includes(name)) return false;
      if (!any) return true;
      return (wrong && r.wc === true) || (missed && r.bm === true) || (failed && r.e !== undefined);
    });
    const f = KEYS[state.key], d = state.dir;
    rows = rows.slice().sort((a, b) => {
      const x = f(a), y = f(b);
      if (x === null && y === null) return a.i - b.i;
      if (x === null) return 1;      // images without the value last, either direction
      if (y === null) return -1;
      return x === y ? a.i - b.i : (x < y ? -d : d);
    });
    state.shown = rows;
    const pages = Math.max(1, Math.ceil(rows.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    render();
  }
  function render() {
    const body = $("tbody");
    const start = state.page * state.size;
    const part = state.shown.slice(start, start + state.size);
    const frag = document.createDocumentFragment();
    for (const r of part) frag.appendChild(row(r));
    body.replaceChildren(frag);
    const pages = Math.max(1, Math.ceil(state.shown.length / state.size));
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages + " · " +
      state.shown.length + " of " + ROWS.length + " images";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("empty").hidden = state.shown.length > 0;
    for (const b of document.querySelectorAll("button.sort")) {
      b.classList.toggle("asc", b.dataset.key === state.key && state.dir === 1);
      b.classList.toggle("desc", b.dataset.key === state.key && state.dir === -1);
    }
    document.body.dataset.ready = "1";
  }
  function openViewer(full, r, rank, caption) {
    const img = $("viewer-img"), svg = $("viewer-svg");
    img.removeAttribute("style");
    img.onload = () => {
      // the file at full resolution; a small one is enlarged (up to 4x) to fill the screen
      const s = Math.min(4, 0.92 * innerWidth / img.naturalWidth, 0.86 * innerHeight / img.naturalHeight);
      if (s > 1) { img.style.width = Math.round(img.naturalWidth * s) + "px"; img.style.maxWidth = "none"; img.style.maxHeight = "none"; }
    };
    img.src = full;
    img.alt = caption;
    svg.replaceChildren();
    boxes(svg, r, rank);
    $("viewer-cap").textContent = caption + (r.u !== undefined ? " · IoU " + r.u.toFixed(3) : "");
    $("viewer").hidden = false;
  }
  $("viewer").addEventListener("click", () => { $("viewer").hidden = true; });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") $("viewer").hidden = true;
    else if (ev.key === "ArrowRight" && !$("next").disabled) $("next").click();
    else if (ev.key === "ArrowLeft" && !$("prev").disabled) $("prev").click();
  });
  for (const b of document.querySelectorAll("button.sort")) {
    b.addEventListener("click", () => {
      const k = b.dataset.key;
      // first click: worst first for error, best first for score, lowest first for IoU
      if (state.key === k) state.dir = -state.dir;
      else { state.key = k; state.dir = k === "score" || k === "error" ? -1 : 1; }
      state.page = 0;
      apply();
    });
  }
  for (const id of ["f-class", "f-wrong", "f-missed", "f-failed", "page-size"]) {
    $(id).addEventListener("change", () => { state.size = Number($("page-size").value); state.page = 0; apply(); });
  }
  $("f-name").addEventListener("input", () => { state.page = 0; apply(); });
  $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, $("controls").offsetTop); });
  $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, $("controls").offsetTop); });
  apply();
})();
