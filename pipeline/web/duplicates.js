// The duplicates view: groups of copies of one photo, the image to keep marked, each image's pixel
// size, file size, date and folder. On the service it asks /api/duplicates and, given the write
// token, takes a group's other images out of the index; written to a file, its data is inline.
(() => {
  const $ = (id) => document.getElementById(id);
  const status = (text, isError) => {
    $("duplicates-status").textContent = text;
    $("duplicates-status").className = isError ? "error" : "";
  };
  const embedded = $("duplicates-data");
  const kilobytes = (bytes) => bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MB` : `${Math.round(bytes / 1024)} KB`;
  const text = (tag, className, content) => Object.assign(document.createElement(tag), {className, textContent: content});

  // One image, from text nodes only: paths and labels come from file names, never markup.
  function card(image) {
    const box = document.createElement("div");
    box.className = "copy" + (image.keep ? " keep" : "");
    box.dataset.id = image.id;
    box.title = image.path;
    const source = image.thumbnail !== undefined
      ? (image.thumbnail ? `data:image/jpeg;base64,${image.thumbnail}` : null) : `/api/images/${image.id}`;
    box.append(source ? Object.assign(document.createElement("img"), {src: source, alt: image.path, loading: "lazy"})
      : text("div", "missing", "missing"));
    box.append(text("div", "badge", image.keep ? "keep" : "copy"),
               text("div", "name", image.path.split("/").pop()),
               text("div", "", `${image.width}×${image.height} · ${kilobytes(image.bytes)}`),
               text("div", "", image.modified.slice(0, 16).replace("T", " ")),
               text("div", "folder", image.folder));
    const check = image.verification;
    box.append(text("div", "check", check ? `${check.alignment}${check.mirrored ? ", mirrored" : ""} · ` +
      `correlation ${check.correlation.toFixed(3)}` + (check.inliers ? ` · ${check.inliers} matches` : "")
      : "the others were checked against this one"));
    return box;
  }

  // Take a group's copies out of the index, once the person has confirmed it; the removed cards leave the group.
  async function removeOthers(group, section, button, note) {
    const others = group.images.filter((image) => !image.keep).map((image) => image.id);
    const say = (message, className) => Object.assign(note, {textContent: message, className});
    const token = $("token").value;
    if (!token) return say("enter the server's write token above to remove", "error");
    if (!window.confirm(`Take the ${others.length} other image${others.length === 1 ? "" : "s"} of this group out ` +
                        "of the index? The files stay on disk.")) return;
    button.disabled = true;
    try {
      const response = await fetch("/api/remove", {method: "POST", body: JSON.stringify({ids: others}),
        headers: {"Content-Type": "application/json", "Authorization": `Bearer ${token}`}});
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      const removed = new Set(answer.removed.map(String));
      section.querySelectorAll(".copy").forEach((card) => removed.has(card.dataset.id) && card.remove());
      group.images = group.images.filter((image) => !removed.has(String(image.id)));
      section.querySelector("h2").textContent = heading(group, section.dataset.number);
      button.remove();
      say(`removed ${answer.removed.length} from the index (the files stay on disk); ${answer.images} images indexed`,
          "note");
    } catch (error) {
      say(error.message, "error");
      button.disabled = false;
    }
  }

  const heading = (group, number) => `${number}. ${group.images.length} image${group.images.length === 1 ? "" : "s"}` +
    ` · keep ${group.images[0].path.split("/").pop()}: ${group.why}`;

  function render(data) {
    const groups = data.groups.map((group, number) => {
      const section = document.createElement("section");
      section.className = "group";
      section.dataset.number = number + 1;
      section.append(text("h2", "", heading(group, number + 1)));
      const row = document.createElement("div");
      row.className = "copies";
      row.append(...group.images.map(card));
      section.append(row);
      if (!embedded) {
        const note = text("span", "", "");
        const button = text("button", "", `remove the other ${group.images.length - 1} from the index`);
        button.addEventListener("click", () => removeOthers(group, section, button, note));
        const actions = document.createElement("p");
        actions.append(button, " ", note);
        section.append(actions);
      }
      return section;
    });
    $("duplicates").replaceChildren(...groups);
    const images = data.groups.reduce((sum, group) => sum + group.images.length, 0);
    const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;
    status(`${plural(data.groups.length, "group")} of copies (${images} images), from ` +
           `${plural(data.compared, "candidate pair")} ` +
           "verified on the images" + (data.unreadable.length ? ` · ${data.unreadable.length} unreadable` : ""));
  }

  if (embedded) render(JSON.parse(embedded.textContent));
  else fetch("/api/duplicates").then(async (response) => {
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    render(data);
  }).catch((error) => status(error.message, true));
})();
