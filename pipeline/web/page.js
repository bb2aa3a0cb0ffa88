const $ = (id) => document.getElementById(id);
// The last single-photo query (by id, URL or file), what "add to query", "less like" and a dragged region build on.
let current = null;
const extra = {like: [], unlike: []};  // ids of results added to the query, or counting against it
const status = (text, isError) => { $("status").textContent = text; $("status").className = isError ? "error" : ""; };

function options() {
  const params = {n: $("n").value || "12"};
  if ($("nprobe").value && $("nprobe").value !== "auto") params.nprobe = $("nprobe").value;
  return params;
}

// On a narrow screen the form takes the first screen: bring the answer into view once it is there.
function showAnswer() {
  if (window.matchMedia("(max-width: 700px)").matches) $("status").scrollIntoView({block: "start"});
}

function render(data, querySrc, note) {
  const img = document.createElement("img");
  img.src = querySrc;
  img.alt = "query";
  img.draggable = false;
  const frame = document.createElement("div");
  frame.className = "frame";
  frame.title = "drag a rectangle over the photo to search by that part of it";
  frame.append(img);
  if (data.box) frame.append(boxElement(...data.box));
  if (!extra.like.length && !extra.unlike.length) enableRegion(frame, img);
  const caption = document.createElement("div");
  caption.textContent = `query: ${data.query} · searched ${data.nprobe} of the clusters` +
    (data.expansion ? ` · ranked with its ${data.expansion} nearest images` : "") +
    (data.combined ? ` · one query from ${data.combined}` : "") + (data.box ? " · by the region outlined" : "");
  $("query").replaceChildren(frame, caption);
  $("why").replaceChildren();
  $("results").replaceChildren(...data.results.map((hit) => hitElement(hit, data.expansion)));
  status(`${data.results.length} results` + (note ? ` · ${note}` : ""));
  showAnswer();
}

// One result, built from text nodes only: labels and paths come from folder names, never markup.
function hitElement(hit, expansion) {
  const a = document.createElement("a");
  a.className = "hit" + (hit.same_image ? " same" : "");
  a.href = "?" + new URLSearchParams({id: hit.id, ...options()});
  a.dataset.id = hit.id;
  a.title = hit.path;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = `result ${hit.rank}`;
  img.src = `/api/images/${hit.id}`;
  const score = document.createElement("span");
  score.className = "score";
  score.title = "the score the results are in the order of: " + (hit.ranked_by === "query"
    ? `the cosine distance to the query (${hit.distance.toFixed(4)}), kept first`
    : `the cosine distance to the query averaged with its nearest images (${hit.distance.toFixed(4)})`);
  score.textContent = `score ${hit.score.toFixed(4)}`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = hit.path.split("/").pop();
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.title = `${hit.path}\ncluster ${hit.cluster}`;
  meta.append(`#${hit.rank} · `, score, name,
              (hit.label ? `${hit.label} · ` : "") + `to the query ${hit.query_distance.toFixed(4)}`);
  const note = hit.same_image ? "same image" : hit.ranked_by === "query" && expansion ? "nearest to the query" : "";
  if (note) {
    const marker = document.createElement("span");
    marker.className = "note";
    marker.textContent = note;
    meta.append(document.createElement("br"), marker);
  }
  a.append(img, meta, actions(hit));
  a.addEventListener("click", (event) => { event.preventDefault(); searchBy({id: hit.id}, true); });
  return a;
}

// "+ like" and "− less" add a result to the query, for or against; "why" shows how it matched a one-photo query.
function actions(hit) {
  const row = document.createElement("div");
  row.className = "actions";
  const button = (text, title, act) => {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = text;
    element.title = title;
    element.addEventListener("click", (event) => { event.preventDefault(); event.stopPropagation(); act(); });
    row.append(element);
  };
  if (current && !current.box && !hit.same_image) {  // a region is of one photo: several photos make no region
    button("+ like", "add this photo to the query", () => { extra.like.push(hit.id); searchCombined(); });
    button("− less", "count this photo's look against the results", () => { extra.unlike.push(hit.id); searchCombined(); });
  }
  if (current && !extra.like.length && !extra.unlike.length) {
    button("why", "why this result matched: where each photo shows what the other shows", () => showWhy(hit));
  }
  return row;
}

// The heatmaps of why a result matched the query photo (or the region searched by), as the service draws them.
async function showWhy(hit) {
  const caption = document.createElement("div");
  caption.textContent = `why #${hit.rank} matched: bright where each photo shows what the other shows`;
  $("why").replaceChildren(caption);
  try {
    const region = current.box ? {box: current.box} : {};
    let response;
    if (current.kind === "file") {
      const form = new FormData();
      form.append("image", current.file);
      form.append("id", hit.id);
      if (current.box) form.append("box", current.box);
      response = await fetch("/api/explain", {method: "POST", body: form});
    } else {
      const query = current.kind === "id" ? {query: current.id} : {url: current.url};
      response = await fetch("/api/explain?" + new URLSearchParams({...query, id: hit.id, ...region}));
    }
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    const img = document.createElement("img");
    img.alt = `why result ${hit.rank} matched`;
    img.src = URL.createObjectURL(await response.blob());
    $("why").append(img);
  } catch (error) { caption.textContent = `why #${hit.rank} matched: ${error.message}`; }
  $("why").scrollIntoView({block: "nearest"});
}

// Several photos as one query: the query photo and the results added, less the ones counted against, all by id
// but an uploaded photo: nothing is downloaded or encoded again.
async function searchCombined() {
  startSearch();
  try {
    const note = `${1 + extra.like.length} photos, ${extra.unlike.length} less like`;
    if (current.kind === "file") {
      const form = new FormData();
      form.append("image", current.file, current.file.name || "query");
      for (const id of extra.like) form.append("like", id);
      for (const id of extra.unlike) form.append("unlike", id);
      for (const [key, value] of Object.entries(options())) form.append(key, value);
      render(await post(form, true), URL.createObjectURL(current.file), note);
    } else {
      const query = current.kind === "id" ? {id: Number(current.id)} : {url: current.url};
      const data = await post({...query, like: extra.like, unlike: extra.unlike, n: Number(options().n),
                               ...(options().nprobe ? {nprobe: options().nprobe} : {})});
      render(data, current.kind === "id" ? `/api/images/${current.id}` : current.url, note);
    }
  } catch (error) { status(error.message, true); }
}

function boxElement(x, y, width, height) {
  const box = document.createElement("div");
  box.className = "box";
  Object.assign(box.style, {left: `${100 * x}%`, top: `${100 * y}%`, width: `${100 * width}%`, height: `${100 * height}%`});
  return box;
}

// Drag (mouse, pen or touch) a rectangle over the query photo to search by that region of it.
function enableRegion(frame, img) {
  let start = null, box = null;
  const at = (event) => {
    const bounds = img.getBoundingClientRect();
    const clamp = (value) => Math.min(1, Math.max(0, value));
    return [clamp((event.clientX - bounds.left) / bounds.width), clamp((event.clientY - bounds.top) / bounds.height)];
  };
  const region = (end) => [Math.min(start[0], end[0]), Math.min(start[1], end[1]),
                           Math.abs(end[0] - start[0]), Math.abs(end[1] - start[1])];
  frame.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    frame.setPointerCapture(event.pointerId);
    start = at(event);
    frame.querySelectorAll(".box").forEach((old) => old.remove());
    box = boxElement(...start, 0, 0);
    frame.append(box);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!start) return;
    const [x, y, width, height] = region(at(event));
    Object.assign(box.style, {left: `${100 * x}%`, top: `${100 * y}%`, width: `${100 * width}%`, height: `${100 * height}%`});
  });
  frame.addEventListener("pointerup", (event) => {
    if (!start) return;
    const [x, y, width, height] = region(at(event));
    start = null;
    if (width < 0.05 || height < 0.05) { box.remove(); return; }
    const text = [x, y, width, height].map((value) => value.toFixed(4)).join(",");
    if (current.kind === "file") searchFile(current.file, text);
    else searchBy({...(current.kind === "id" ? {id: current.id} : {url: current.url}), box: text}, true);
  });
}

async function post(body, isForm) {
  const response = await fetch("/api/search", isForm ? {method: "POST", body}
    : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// A new search clears the last one's results first: a failure never leaves old results under its message.
function startSearch() {
  $("query").replaceChildren();
  $("results").replaceChildren();
  status("searching…");
}

// Each search by id or URL gets an address of its own, to share or reload; the form shows what was searched.
async function searchBy(query, remember) {
  const params = {...query, ...options()};
  current = {...(query.id !== undefined ? {kind: "id", id: query.id} : {kind: "url", url: query.url}), box: query.box};
  extra.like = [];
  extra.unlike = [];
  if (remember) history.pushState(params, "", "?" + new URLSearchParams(params));
  $("file").value = "";
  $("url").value = query.url || "";
  startSearch();
  try {
    const data = await post({...params, n: Number(params.n), ...(query.id !== undefined ? {id: Number(query.id)} : {})});
    render(data, query.id !== undefined ? `/api/images/${query.id}` : query.url);
  } catch (error) { status(error.message, true); }
}

// An uploaded photo stays in this browser: its search has no address to share, and the page says so.
async function searchFile(file, box) {
  current = {kind: "file", file, box};
  extra.like = [];
  extra.unlike = [];
  const form = new FormData();
  form.append("image", file);
  if (box) form.append("box", box);
  for (const [key, value] of Object.entries(options())) form.append(key, value);
  history.pushState({}, "", location.pathname);
  $("url").value = "";
  startSearch();
  try {
    render(await post(form, true), URL.createObjectURL(file),
           "an uploaded photo has no link of its own (it never leaves this search): click a result, or search by URL, for a link to share");
  } catch (error) { status(error.message, true); }
}

function fromLocation() {
  const params = new URLSearchParams(location.search);
  if (params.get("n")) $("n").value = params.get("n");
  $("nprobe").value = params.get("nprobe") || "auto";
  const box = params.get("box") ? {box: params.get("box")} : {};
  if (params.get("id") !== null) searchBy({id: params.get("id"), ...box}, false);
  else if (params.get("url")) searchBy({url: params.get("url"), ...box}, false);
  else { $("query").replaceChildren(); $("results").replaceChildren(); status(""); }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("url").value) searchBy({url: $("url").value}, true);
  else if ($("file").files.length) searchFile($("file").files[0]);
  else status("choose an image or paste a URL first", true);
});
$("file").addEventListener("change", () => { if ($("file").files.length) searchFile($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) searchFile(event.dataTransfer.files[0]);
});
window.addEventListener("popstate", fromLocation);
fetch("/api/stats").then((r) => r.json()).then((s) => {
  const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;
  $("stats").textContent = `${plural(s.images, "image")} · ${plural(s.clusters, "cluster")} · nprobe ${s.nprobe} by default` +
    (s.labels.length ? ` · labels: ${s.labels.join(", ")}` : "");
});
fromLocation();
