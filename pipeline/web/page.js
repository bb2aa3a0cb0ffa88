const $ = (id) => document.getElementById(id);
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
  const caption = document.createElement("div");
  caption.textContent = `query: ${data.query} · searched ${data.nprobe} of the clusters` +
    (data.expansion ? ` · ranked with its ${data.expansion} nearest images` : "");
  $("query").replaceChildren(img, caption);
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
  a.append(img, meta);
  a.addEventListener("click", (event) => { event.preventDefault(); searchBy({id: hit.id}, true); });
  return a;
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
async function searchFile(file) {
  const form = new FormData();
  form.append("image", file);
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
  if (params.get("id") !== null) searchBy({id: params.get("id")}, false);
  else if (params.get("url")) searchBy({url: params.get("url")}, false);
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
