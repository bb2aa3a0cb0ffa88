// The report's t-SNE map: points coloured by label or by cluster; a point's thumbnail, path and
// cluster outline on hover; a legend entry picking out its group; every cluster's outline on
// request. Drawn from the JSON in #map-data; no library and nothing fetched, so the report stays
// one self-contained file.
(() => {
  const data = JSON.parse(document.getElementById("map-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const SIZE = 640, PAD = 14;
  const place = (value) => PAD + value * (SIZE - 2 * PAD);
  const svg = document.getElementById("map");
  const tip = document.getElementById("map-tip");
  const legend = document.getElementById("map-legend");
  const colourBy = document.getElementById("map-colour-by");
  const element = (name, attributes) => {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    return node;
  };
  svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);

  const outlines = new Map();
  const outlineLayer = element("g", {class: "outlines"});
  for (const {cluster, polygon, centre} of data.outlines) {
    const path = element("path", {d: "M" + polygon.map(([x, y]) => `${place(x)},${place(y)}`).join("L") + "Z"});
    const number = element("text", {x: place(centre[0]), y: place(centre[1])});
    number.textContent = cluster;
    const group = element("g", {"data-cluster": cluster});
    group.append(path, number);
    outlines.set(cluster, group);
    outlineLayer.append(group);
  }
  const dots = data.points.map(([x, y], i) => element("circle", {cx: place(x), cy: place(y), r: 3.2, "data-i": i}));
  const dotLayer = element("g", {class: "dots"});
  dotLayer.append(...dots);
  svg.append(outlineLayer, dotLayer);

  const groupOf = (i, mode) => data.points[i][mode === "label" ? 2 : 3];
  const outline = (cluster, on) => { if (outlines.has(cluster)) outlines.get(cluster).classList.toggle("hot", on); };
  function highlight(mode, group) {
    svg.classList.toggle("focus", group !== null);
    dots.forEach((dot, i) => dot.classList.toggle("on", group !== null && groupOf(i, mode) === group));
    for (const cluster of outlines.keys()) outline(cluster, mode === "cluster" && cluster === group);
  }

  function paint() {
    const mode = colourBy.value;
    const colours = data.colours[mode];
    dots.forEach((dot, i) => dot.setAttribute("fill", colours[groupOf(i, mode)]));
    const counts = new Map();
    data.points.forEach((_, i) => counts.set(groupOf(i, mode), (counts.get(groupOf(i, mode)) || 0) + 1));
    const entries = [...counts].sort((a, b) => b[1] - a[1]).map(([group, count]) => {
      const entry = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colours[group];
      entry.append(swatch, `${data.names[mode][group]} (${count})`);
      entry.addEventListener("mouseenter", () => highlight(mode, group));
      entry.addEventListener("mouseleave", () => highlight(mode, null));
      return entry;
    });
    legend.replaceChildren(...entries);
  }

  svg.addEventListener("mouseover", (event) => {
    const i = event.target.dataset && event.target.dataset.i;
    if (i === undefined) return;
    const [, , label, cluster, path, thumbnail] = data.points[Number(i)];
    const picture = thumbnail ? Object.assign(document.createElement("img"), {src: `data:image/jpeg;base64,${thumbnail}`})
      : Object.assign(document.createElement("div"), {className: "missing", textContent: "missing"});
    const caption = document.createElement("div");
    caption.textContent = path;  // text, never markup: paths and labels come from folder names
    const about = document.createElement("div");
    about.textContent = (data.labelled ? `${data.names.label[label]} · ` : "") + `cluster ${cluster}`;
    tip.replaceChildren(picture, caption, about);
    const box = svg.getBoundingClientRect(), dot = event.target.getBoundingClientRect();
    tip.style.left = `${Math.min(dot.right - box.left + 8, box.width - 220)}px`;
    tip.style.top = `${dot.bottom - box.top + 8}px`;
    tip.hidden = false;
    outline(cluster, true);
  });
  svg.addEventListener("mouseout", (event) => {
    if (!event.target.dataset || event.target.dataset.i === undefined) return;
    tip.hidden = true;
    for (const cluster of outlines.keys()) outline(cluster, false);
  });
  colourBy.addEventListener("change", paint);
  document.getElementById("map-outlines").addEventListener("change", (event) => {
    svg.classList.toggle("outlined", event.target.checked);
  });
  paint();
})();
