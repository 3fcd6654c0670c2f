"use strict";
// The ferkit page: send a photo or a webcam snapshot to /predict, draw the boxes, chart the probabilities.
// URLs are relative so the page also works behind a proxy that serves it under a path prefix.

// The first colour is the one `ferkit predict --annotate` draws with.
const COLOURS = ["#00dc00", "#ff8c00", "#1e90ff", "#e6194b", "#b04fdc", "#00bcbc", "#f032e6", "#808000"];

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const video = $("video");
const statusLine = $("status");
const facesPanel = $("faces");
const gallery = $("gallery");
const thumbs = $("thumbs");
const galleryLine = $("gallery-line");
const saveLink = $("save-results");
const clipStage = $("clip-stage");
const clip = $("clip");
const clipBoxes = $("clip-boxes");
const anim = $("anim");
const animImage = $("anim-img");
const cameraButton = $("camera-button");
const snapshotButton = $("snapshot-button");
const liveToggle = $("live-toggle");

let maxUploadBytes = Infinity;
let maxVideoBytes = Infinity;
let maxVideoFrames = null;
const BUSY_TRIES = 4;
let stream = null;
let current = null; // AbortController of the request whose answer the page will show
let selected = null; // the photo of several on show
let liveRunning = false;
// One id per tab: the server keeps this tab's face tracks (and smoothed labels) apart from other tabs'.
const sessionId = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const megabytes = (bytes) => (bytes / 1024 / 1024).toFixed(1);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
  statusLine.dataset.state = isError ? "error" : "ok";
}

// The answer as JSON, or as a Blob with as = "blob"; a failure throws the server's one-line detail.
async function fetchBody(url, options, as = "json") {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error(`cannot reach the server (${error.message}); is ferkit serve still running?`);
  }
  if (response.ok && as === "blob") return response.blob();
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page, say): the status line below still says what happened.
  }
  if (!response.ok) {
    const fallback = `HTTP ${response.status} ${response.statusText}`;
    const error = new Error(body && typeof body.detail === "string" ? body.detail : fallback);
    error.status = response.status;
    error.retryAfter = Number(response.headers.get("Retry-After")) || 1;
    throw error;
  }
  return body;
}

async function loadModelInfo() {
  const info = $("model-summary");
  try {
    const [health, model] = await Promise.all([fetchBody("health"), fetchBody("model")]);
    maxUploadBytes = health.max_upload_bytes;
    maxVideoBytes = health.max_video_bytes;
    maxVideoFrames = health.max_video_frames;
    const size = model.preprocess.image_size;
    const epoch = model.epoch == null ? "" : `, epoch ${model.epoch}`;
    const accuracy = model.metrics && typeof model.metrics.accuracy === "number"
      ? `, ${model.select_split || "selection"} accuracy ${percent(model.metrics.accuracy)}` : "";
    const source = model.checkpoint || "in memory";
    const mix = model.prior === "photos" ? "everyday photos' class mix"
      : model.prior === "model" ? "its training data's class mix" : `class mix ${model.prior}`;
    // An ensemble names each network with its share, where they differ, and the selection accuracy it was chosen on.
    const share = (m) => m.weight == null ? "" : ` (weight ${Number(m.weight.toPrecision(3))})`;
    const network = (m) => m.metrics && typeof m.metrics.accuracy === "number"
      ? `${m.source}${share(m)}: ${m.select_split || "selection"} ${percent(m.metrics.accuracy)}` : m.source + share(m);
    const several = model.members && model.members.length > 1;
    const weighted = several && model.members.some((m) => m.weight != null) ? "weighted " : "";
    const networks = several
      ? `the ${weighted}average of ${model.members.length} networks (${model.members.map(network).join("; ")})`
      : model.arch;
    const views = { flip: ", each face with its mirror", scales: ", each face framed at 85%, 100% and 115%" };
    // One short line first (on a phone it is most of the screen's first view); what a practitioner checks, folded.
    info.textContent = `Model: ${source} (${several ? `${model.members.length} networks` : model.arch}) at ` +
      `${size}x${size}${accuracy}, read for ${mix}${views[model.tta] || ""}.`;
    $("model-more").textContent = ` ${networks}${epoch}; classes ${model.classes.join(", ")}. ` +
      `Uploads up to ${megabytes(maxUploadBytes)} MB, videos ${megabytes(maxVideoBytes)} MB.`;
    $("model-details").hidden = false;
  } catch (error) {
    info.textContent = `Model information unavailable: ${error.message}`;
  }
}

// The photo on the canvas, redrawn with one face brought forward while its card is pointed at or focused; its
// bitmap is kept open until another takes its place.
let drawn = null;

function forgetDrawn() {
  if (drawn && drawn.bitmap) drawn.bitmap.close();
  drawn = null;
}

function draw(bitmap, result, focus = -1) {
  if (drawn && drawn.bitmap !== bitmap) forgetDrawn();
  drawn = { bitmap, result };
  const { width, height } = result;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  if (bitmap) {
    ctx.drawImage(bitmap, 0, 0, width, height);
  } else { // neither the browser nor the server's preview could show it: the boxes on grey
    ctx.fillStyle = "#c8ccd2";
    ctx.fillRect(0, 0, width, height);
  }
  drawBoxes(ctx, result.faces, width, height, focus);
}

// ``focus``: the index of a face drawn last, its box twice as thick and its tab whole, over its neighbours'.
function drawBoxes(ctx, faces, width, height, focus = -1) {
  // An even line width centred on whole-pixel coordinates covers whole pixels: crisp, exact colour.
  const line = 2 * Math.max(1, Math.round(Math.max(width, height) / 500));
  const fontSize = Math.max(12, Math.round(Math.max(width, height) / 40));
  ctx.font = `${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const tabs = [];
  const order = faces.map((_, i) => i).filter((i) => i !== focus);
  if (faces[focus]) order.push(focus);
  order.forEach((i) => {
    const face = faces[i];
    const [x, y, w, h] = face.box;
    const colour = colourOf(face, i);
    ctx.lineWidth = i === focus ? 2 * line : line;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = colour; // landmarks: small dots at the eyes, nose tip and mouth corners
    (face.landmarks || []).forEach(([px, py]) => {
      ctx.beginPath();
      ctx.arc(px, py, Math.max(line, w / 40), 0, 2 * Math.PI);
      ctx.fill();
    });
    const text = tabText(ctx, face, i, faces.length > 1 && i !== focus ? w + line : Infinity);
    const textHeight = fontSize + 6;
    // Above the box, or inside its top edge at the picture's top (below it, the tab would cover the face beneath).
    const top = y - line / 2 - textHeight >= 0 ? y - line / 2 - textHeight : Math.max(0, y - line / 2);
    const tabWidth = ctx.measureText(text).width + 8;
    const left = Math.max(0, Math.min(x - line / 2, width - tabWidth)); // inside the picture, not cut at its edge
    ctx.fillStyle = colour;
    ctx.fillRect(left, top, tabWidth, textHeight);
    ctx.fillStyle = "#000";
    ctx.fillText(text, left + 4, top + 3);
    tabs[i] = { text, left, top, width: tabWidth, height: textHeight };
  });
  ctx.canvas.dataset.tabs = JSON.stringify(tabs); // what each face's tab says and where, for a reader of the page
}

// In a crowd, a full label over a small face would cover its neighbours: the longest of "3: Happy 87%", "3: Happy"
// and "3" that is no wider than the face's box (its card below says the rest); a lone face always gets it all.
function tabText(ctx, face, i, room) {
  const texts = [`${who(face, i)}: ${face.label} ${percent(face.confidence)}`, `${who(face, i)}: ${face.label}`];
  return texts.find((text) => ctx.measureText(text).width + 8 <= room) || who(face, i);
}

// Camera and video frames carry track ids, so a person keeps their number and colour across frames; an upload
// numbers its faces.
function who(face, i) {
  return face.track ? `#${face.track}` : `${i + 1}`;
}
const colourOf = (face, i) => COLOURS[((face.track || i + 1) - 1) % COLOURS.length];

function barRow(name, p, isTop) {
  const row = document.createElement("div");
  row.className = isTop ? "bar-row top" : "bar-row";
  const label = document.createElement("span");
  label.textContent = name;
  const track = document.createElement("div");
  track.className = "bar-track";
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("data-testid", "prob-bar");
  bar.dataset.class = name;
  bar.dataset.p = String(p);
  bar.style.width = `${(100 * p).toFixed(2)}%`;
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-label", name);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "1");
  bar.setAttribute("aria-valuenow", String(p));
  track.append(bar);
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = percent(p);
  row.append(label, track, value);
  return row;
}

function showFaces(result, classes) {
  facesPanel.replaceChildren();
  result.faces.forEach((face, i) => {
    const card = document.createElement("article");
    card.className = "face";
    card.setAttribute("data-testid", "face");
    card.dataset.box = JSON.stringify(face.box);
    card.dataset.label = face.label;
    if (face.track) card.dataset.track = String(face.track);
    card.style.setProperty("--colour", colourOf(face, i));
    const title = document.createElement("h2");
    title.textContent = `${face.track ? "Person" : "Face"} ${who(face, i)}: ${face.label} ${percent(face.confidence)}`;
    card.append(title, ...classes.map((name) => barRow(name, face.probabilities[name], name === face.label)));
    if (!face.track) linkToPhoto(card, i);
    facesPanel.append(card);
  });
}

// A photo's card and its face on the picture point at each other: the card pointed at or focused brings its face
// forward; a click on a face scrolls to its card and focuses it.
function linkToPhoto(card, i) {
  card.tabIndex = 0;
  const focus = (on) => () => drawn && draw(drawn.bitmap, drawn.result, on ? i : -1);
  card.addEventListener("mouseenter", focus(true));
  card.addEventListener("focus", focus(true));
  card.addEventListener("mouseleave", focus(false));
  card.addEventListener("blur", focus(false));
}

canvas.addEventListener("click", (event) => {
  if (!drawn) return;
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width);
  const y = (event.clientY - rect.top) * (canvas.height / rect.height);
  const inside = drawn.result.faces
    .map((face, i) => ({ i, area: face.box[2] * face.box[3], box: face.box }))
    .filter(({ box: [bx, by, bw, bh] }) => x >= bx && x <= bx + bw && y >= by && y <= by + bh)
    .sort((a, b) => a.area - b.area); // the smallest box holding the point: a face inside another's box
  const card = inside.length ? facesPanel.querySelectorAll("[data-testid=face]")[inside[0].i] : null;
  if (card && !card.dataset.track) {
    card.scrollIntoView({ block: "nearest", behavior: "smooth" });
    card.focus({ preventScroll: true });
  }
});

function show(bitmap, result, classes, name) {
  draw(bitmap, result);
  showFaces(result, classes);
  const found = result.faces.length;
  const size = `${result.width}x${result.height}`;
  setStatus(found > 1 ? `${found} faces in ${name} (${size}): ${labelCounts(result.faces)}`
    : found ? `1 face in ${name} (${size})`
    : `No face found in ${name} (${size}); try a larger, frontal, well-lit face`);
}

function showError(message) {
  facesPanel.replaceChildren();
  canvas.width = canvas.height = 0; // the previous image's boxes do not belong to this upload
  forgetDrawn();
  setStatus(`Error: ${message}`, true);
}

// One photo's result and the classes it scores.
async function read(blob, name, signal, tracked = false) {
  const body = await send("predict" + (tracked ? `?session=${sessionId}` : ""), blob, name, signal);
  return { result: body.results[0], classes: body.classes, prior: body.prior, tta: body.tta };
}

async function send(url, blob, name, signal, as = "json") {
  const [most, flag] = url.startsWith("video") ? [maxVideoBytes, "--max-video-mb"] : [maxUploadBytes, "--max-upload-mb"];
  if (blob.size > most) {
    throw new Error(`${name} is ${megabytes(blob.size)} MB; this server accepts up to ${megabytes(most)} MB ` +
      `(ferkit serve ${flag} sets it)`);
  }
  const form = new FormData();
  form.append("file", blob, name);
  // A busy server (503) says when to come back; a file is given up only after a few such answers.
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await fetchBody(url, { method: "POST", body: form, signal }, as);
    } catch (error) {
      if (error.status !== 503 || attempt === BUSY_TRIES || signal.aborted) throw error;
      await sleep(1000 * error.retryAfter);
    }
  }
}

// A photo the browser cannot decode (HEIC outside Safari, TIFF) as the server's JPEG of it, 1600 pixels at most,
// asked once per photo and kept for both its thumbnail and its view: a HEIC's decoding is half a second of the
// server's time.
const PREVIEW_SIDE = 1600;
const previews = new WeakMap();
function preview(blob, name, signal) {
  if (!previews.has(blob)) {
    const asked = send(`preview?side=${PREVIEW_SIDE}`, blob, name, signal, "blob");
    asked.catch(() => previews.delete(blob)); // a refused or cancelled one is asked again next time
    previews.set(blob, asked);
  }
  return previews.get(blob);
}

// The picture to draw on: the browser's own decoding, else the server's preview; null when neither reads it.
async function decode(blob, name, signal) {
  try {
    return await createImageBitmap(blob);
  } catch {
    // not a format this browser reads
  }
  try {
    return await createImageBitmap(await preview(blob, name, signal));
  } catch {
    return null;
  }
}

// A new upload or snapshot replaces whatever the page was reading or showing.
function begin() {
  if (current) current.abort();
  current = new AbortController();
  selected = null;
  closeClip();
  thumbs.querySelectorAll("img, video").forEach((picture) => URL.revokeObjectURL(picture.src));
  if (saveLink.href) URL.revokeObjectURL(saveLink.href);
  saveLink.removeAttribute("href");
  saveLink.hidden = true;
  thumbs.replaceChildren();
  gallery.hidden = true;
  return current;
}

// Returns whether a result was shown, so live mode can stop on errors instead of repeating them.
async function analyse(blob, name, tracked = false) {
  const controller = begin();
  setStatus(`Analysing ${name}...`);
  try {
    const [bitmap, { result, classes }] = await Promise.all([
      decode(blob, name, controller.signal),
      read(blob, name, controller.signal, tracked),
    ]);
    if (current !== controller) return false;
    show(bitmap, result, classes, name);
    return true;
  } catch (error) {
    if (error.name === "AbortError" || current !== controller) return false;
    showError(error.message);
    return false;
  }
}

// "Happy 2, Neutral 1": most common first, ties in the order first met, as Python's Counter.most_common orders them.
function labelCounts(faces) {
  const counts = new Map();
  faces.forEach((f) => counts.set(f.label, (counts.get(f.label) || 0) + 1));
  return Array.from(counts).sort((a, b) => b[1] - a[1]).map(([label, n]) => `${label} ${n}`).join(", ");
}

function faceCaption(faces) {
  if (faces.length === 1) return `${faces[0].label} ${percent(faces[0].confidence)}`;
  return faces.length ? `${faces.length} faces: ${labelCounts(faces)}` : "no face";
}

// A video's people by the expression each showed most: "2 people: Happy 1, Neutral 1".
const asLabels = (tracks) => tracks.map((t) => ({ label: t.dominant }));
const peopleCount = (n) => (n === 1 ? "1 person" : `${n} people`);
const videoCaption = (tracks) => (tracks.length ? `${peopleCount(tracks.length)}: ${labelCounts(asLabels(tracks))}` : "no face");

// Several photos' results saved as `ferkit predict --json` writes them: one document, a result per photo in the order
// given, a photo not read as a result with its error.
// Videos among them give their frames' results in their place, and their people's rows as `tracks` (`--summary`).
function offerResults(entries) {
  const first = entries.find((e) => e.result || e.video);
  if (!first) return;
  const { classes, prior, tta } = first.video || first;
  const results = entries.flatMap((e) => (e.video ? e.video.results : [e.result || { source: e.name, faces: [], error: e.error }]));
  const videos = entries.filter((e) => e.video);
  offer({ classes, prior, tta, results, ...(videos.length ? { tracks: videos.flatMap((e) => e.video.tracks) } : {}) });
}

function offer(answer) {
  // As `ferkit predict --json` writes them: without the frames a server sent for the page to play.
  const saved = JSON.stringify(answer, (key, value) => (key === "image" ? undefined : value), 2);
  saveLink.href = URL.createObjectURL(new Blob([saved], { type: "application/json" }));
  saveLink.hidden = false;
}

// The line over several photos, worded as `ferkit predict` words it over several images.
// Videos among them add a part for their people: "3 photos: 2 faces (Happy 2); 1 video: 1 person (Happy 1); ...".
function summary(entries) {
  const videos = entries.filter((e) => e.kind !== "photo");
  const photos = entries.length - videos.length;
  const faces = entries.flatMap((e) => (e.result ? e.result.faces : []));
  let line = `${photos} photo${photos === 1 ? "" : "s"}: ${faces.length} face${faces.length === 1 ? "" : "s"}`;
  if (faces.length) line += ` (${labelCounts(faces)})`;
  if (videos.length) {
    const tracks = videos.flatMap((e) => (e.video ? e.video.tracks : []));
    line += `; ${videos.length} video${videos.length === 1 ? "" : "s"}: ${peopleCount(tracks.length)}`;
    if (tracks.length) line += ` (${labelCounts(asLabels(tracks))})`;
  }
  const faceless = entries.filter((e) => (e.result && !e.result.faces.length) || (e.video && !e.video.tracks.length)).length;
  const failed = entries.filter((e) => e.error).length;
  if (faceless) line += `; ${faceless} without a face`;
  if (failed) line += `; ${failed} not read`;
  return line;
}

// A photo of several is decoded when shown, not kept decoded: a few hundred photos would hold gigabytes of pixels.
async function select(entry) {
  selected = entry;
  thumbs.querySelectorAll(".thumb").forEach((t) => t.setAttribute("aria-pressed", String(t === entry.thumb)));
  closeClip();
  if (entry.error) return showError(entry.error);
  if (entry.video) return showVideo(entry.file, entry.name, entry.video, entry.kind);
  const bitmap = await decode(entry.file, entry.name, current.signal);
  if (selected === entry) show(bitmap, entry.result, entry.classes, entry.name);
  else if (bitmap) bitmap.close(); // another was chosen meanwhile
}

// Several photos: each is sent on its own, so one that cannot be read costs only itself, two at a time so a busy
// server is not flooded; each gets a thumbnail that shows it when clicked, under the line over them all.
async function analyseMany(files) {
  const controller = begin();
  const entries = files.map(({ file, name, kind }) => {
    const thumb = document.createElement("button");
    thumb.type = "button";
    thumb.className = "thumb";
    thumb.setAttribute("data-testid", "thumb");
    thumb.dataset.name = name;
    thumb.dataset.state = "pending";
    const moving = kind === "video"; // an animated image plays in an <img>
    const picture = document.createElement(moving ? "video" : "img");
    if (moving) { // its first frame, silent and still
      picture.preload = "metadata";
      picture.muted = true;
    } else {
      picture.alt = "";
      picture.loading = "lazy";
      picture.decoding = "async";
    }
    picture.src = URL.createObjectURL(file);
    // A format the browser cannot show: the server's small JPEG of it, tried once.
    picture.addEventListener("error", async () => {
      URL.revokeObjectURL(picture.src);
      if (moving || picture.dataset.preview) return picture.remove();
      picture.dataset.preview = "asked";
      try {
        picture.src = URL.createObjectURL(await preview(file, name, controller.signal));
      } catch {
        picture.remove();
      }
    });
    const title = document.createElement("span");
    title.textContent = name;
    const caption = document.createElement("span");
    caption.setAttribute("data-testid", "thumb-caption");
    caption.textContent = "...";
    thumb.append(picture, title, caption);
    thumbs.append(thumb);
    return { file, name, kind, thumb, caption };
  });
  gallery.hidden = false;
  const noun = entries.some((e) => e.kind !== "photo") ? "files" : "photos";
  let done = 0;
  let shown = false;
  const queue = [...entries];
  const worker = async () => {
    for (let entry = queue.shift(); entry; entry = queue.shift()) {
      try {
        if (entry.kind !== "photo") {
          const request = await videoRequest(entry.kind, entry.file);
          entry.video = await send(request, entry.file, entry.name, controller.signal);
          entry.caption.textContent = videoCaption(entry.video.tracks);
        } else {
          Object.assign(entry, await read(entry.file, entry.name, controller.signal));
          entry.caption.textContent = faceCaption(entry.result.faces);
        }
        entry.thumb.dataset.state = "ok";
      } catch (error) {
        if (error.name === "AbortError" || current !== controller) return;
        entry.error = error.message;
        entry.caption.textContent = "not read";
        entry.thumb.dataset.state = "error";
      }
      if (current !== controller) return;
      entry.thumb.title = `${entry.name}: ${entry.error || entry.caption.textContent}`;
      entry.thumb.addEventListener("click", () => select(entry));
      done += 1;
      // The first photo that can be read is on show while the rest are read, whichever answer came first.
      const first = entries.find((e) => !e.error);
      if (!shown && first && (first.result || first.video)) {
        shown = true;
        select(first);
      }
      galleryLine.textContent = `Read ${done} of ${entries.length} ${noun}...`;
    }
  };
  galleryLine.textContent = `Analysing ${entries.length} ${noun}...`;
  setStatus(galleryLine.textContent);
  await Promise.all([worker(), worker()]);
  if (current !== controller) return;
  if (!shown) showError(entries[0].error);
  const why = entries.some((e) => e.error) ? " or why it was not read" : "";
  const which = noun === "files" ? "a photo or video" : "a photo";
  galleryLine.textContent = `${summary(entries)}; click ${which} to see its faces${why}`;
  offerResults(entries);
}

// files: [{file, name}], the name as the page shows it.
async function analyseFiles(files) {
  if (!files.length) return;
  setStatus(`Analysing ${files.length === 1 ? files[0].name : `${files.length} files`}...`); // while their kinds are read
  const kinds = await Promise.all(files.map(({ file, name }) => kindOf(file, name)));
  const typed = files.map((f, i) => ({ ...f, kind: kinds[i] }));
  if (typed.length === 1 && typed[0].kind !== "photo") analyseVideo(typed[0].file, typed[0].name, typed[0].kind);
  else if (typed.length === 1) analyse(typed[0].file, typed[0].name);
  else if (typed.length > 1) analyseMany(typed);
}

// What `ferkit predict` reads a file as: "video", "animation" (a GIF, PNG or WebP of several frames, tracked as a
// video) or "photo".
const ANIMATABLE = { ".gif": "image/gif", ".png": "image/png", ".webp": "image/webp" };
async function kindOf(file, name) {
  if (isVideo(file, name)) return "video";
  const suffix = Object.keys(ANIMATABLE).find((s) => name.toLowerCase().endsWith(s));
  if (!suffix && !Object.values(ANIMATABLE).includes(file.type)) return "photo";
  // A GIF's second frame may come anywhere after its first; the others say so before their pixels.
  const gif = suffix === ".gif" || file.type === "image/gif";
  try {
    return hasSeveralFrames(new Uint8Array(await file.slice(0, gif ? file.size : 1 << 20).arrayBuffer())) ? "animation" : "photo";
  } catch {
    return "photo"; // unreadable here: the server says what is wrong with it
  }
}

// Whether an image file's bytes hold more than one frame, as PIL counts them (the server decides the same way): a GIF's
// second image, an APNG's frame count (its acTL chunk, before the pixels), an animated WebP's flag.
function hasSeveralFrames(bytes) {
  const ascii = (at, n) => String.fromCharCode(...bytes.subarray(at, at + n));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const colours = (packed) => (packed & 0x80 ? 3 << ((packed & 7) + 1) : 0); // a colour table's bytes
  if (ascii(0, 4) === "GIF8") {
    let at = 13 + colours(bytes[10]);
    const skipBlocks = () => {
      while (at < bytes.length && bytes[at]) at += bytes[at] + 1;
      at += 1;
    };
    for (let images = 0; at < bytes.length;) {
      if (bytes[at] === 0x21) { // an extension: its label, then its blocks
        at += 2;
        skipBlocks();
      } else if (bytes[at] === 0x2c) { // an image: its descriptor, colours, code size, then its blocks
        if (++images > 1) return true;
        at += 10 + colours(bytes[at + 9]) + 1;
        skipBlocks();
      } else return false; // the trailer
    }
    return false;
  }
  if (ascii(1, 3) === "PNG") {
    for (let at = 8; at + 12 <= bytes.length; at += 12 + view.getUint32(at)) {
      const type = ascii(at + 4, 4);
      if (type === "acTL") return view.getUint32(at + 8) > 1;
      if (type === "IDAT") return false;
    }
    return false;
  }
  return ascii(0, 4) === "RIFF" && ascii(8, 8) === "WEBPVP8X" && (bytes[20] & 0x02) !== 0;
}

const named = (files) => Array.from(files, (file) => ({ file, name: file.name }));

$("file-input").addEventListener("change", (event) => {
  analyseFiles(named(event.target.files));
  event.target.value = ""; // choosing the same files again must fire "change" again
});

// A video: the people in it are tracked by the server (POST /video) and drawn over the video as it plays, each
// person with their number and colour; the panel gives each person's share of time per expression.
const VIDEO_SUFFIXES = [".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm", ".wmv"]; // as predict's
const isVideoName = (name) => VIDEO_SUFFIXES.some((suffix) => name.toLowerCase().endsWith(suffix));
const isVideo = (file, name) => file.type.startsWith("video/") || isVideoName(name);
let clipFrames = []; // the tracked video's results, in time order

function closeClip() {
  clipStage.hidden = true;
  canvas.hidden = false;
  clip.pause();
  if (clip.src) URL.revokeObjectURL(clip.src);
  clip.removeAttribute("src");
  stopAnimation();
  clipFrames = [];
}

// The last frame read at or before the one shown (by its time, or by its index): its boxes stay until the next read.
function frameAt(key, value) {
  let [low, high] = [0, clipFrames.length - 1];
  if (high < 0 || value < clipFrames[0][key]) return null;
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    if (clipFrames[mid][key] <= value) low = mid;
    else high = mid - 1;
  }
  return clipFrames[low];
}

function drawOverlay(frame) {
  const ctx = clipBoxes.getContext("2d");
  ctx.clearRect(0, 0, clipBoxes.width, clipBoxes.height);
  if (frame) drawBoxes(ctx, frame.faces, frame.width, frame.height);
  clipBoxes.dataset.frame = frame ? String(frame.frame) : "";
}

function drawClipFrame() {
  if (!animation.source) drawOverlay(frameAt("time_s", clip.currentTime + 1e-3));
}

// An animated image on show. A <video> cannot play one, so the page draws its frames in turn, each for its delay
// (under 20 ms shown for 100, as `ferkit predict` times them), looping as an <img> does; a click pauses it or plays
// it on. The frames come from the browser's ImageDecoder (Chromium and Firefox, on https:// pages and localhost) or,
// where there is none (Safari), from the server with the faces (`/video?frames=true`, each frame read as a JPEG).
// Where neither can be had, the <img> plays it, without the boxes. A video this browser cannot show in a <video> is
// played from the server's frames the same way.
const decodesFrames = typeof ImageDecoder !== "undefined";
async function videoRequest(kind, file) {
  const framesWanted = kind === "animation" ? !decodesFrames : !(await playsHere(file));
  return framesWanted ? "video?frames=true" : "video";
}

// Whether this browser shows a video file's pictures, tried on the file before it is sent: no browser plays an AVI,
// MPEG or WMV, Chromium no MPEG-4 Part 2 (as OpenCV writes MP4), and many an iPhone's HEVC .mov, whose sound alone
// may play. Undecided after a few seconds, it is taken as playable.
function playsHere(file) {
  return new Promise((resolve) => {
    const probe = document.createElement("video");
    const url = URL.createObjectURL(file);
    const timer = setTimeout(() => done(true), 5000);
    function done(plays) {
      clearTimeout(timer);
      probe.removeAttribute("src");
      probe.load(); // lets the browser drop the decoder now
      URL.revokeObjectURL(url);
      resolve(plays);
    }
    probe.muted = true;
    probe.preload = "auto";
    probe.addEventListener("loadeddata", () => done(probe.videoWidth > 0), { once: true });
    probe.addEventListener("error", () => done(false), { once: true });
    probe.src = url;
  });
}
const animation = { source: null, count: 0, index: 0, timer: 0, paused: false };

function stopAnimation() {
  clearTimeout(animation.timer);
  if (animation.source) animation.source.close();
  Object.assign(animation, { source: null, count: 0, index: 0, timer: 0, paused: false });
  anim.hidden = animImage.hidden = true;
  if (animImage.src) URL.revokeObjectURL(animImage.src);
  animImage.removeAttribute("src");
}

// A source of frames: how many, the file's frame at a place, and the place of the k-th frame the server read.
async function decodedFrames(file, name) {
  const type = file.type || ANIMATABLE[Object.keys(ANIMATABLE).find((s) => name.toLowerCase().endsWith(s))];
  const decoder = new ImageDecoder({ data: await file.arrayBuffer(), type });
  try {
    await decoder.tracks.ready;
    await decoder.completed;
  } catch (error) {
    decoder.close();
    throw error;
  }
  return {
    count: decoder.tracks.selectedTrack.frameCount,
    async frame(index) {
      const { image } = await decoder.decode({ frameIndex: index });
      return { image, frame: index, width: image.displayWidth, height: image.displayHeight,
        ms: image.duration / 1000, close: () => image.close() };
    },
    place: (read) => clipFrames[read].frame,
    close: () => decoder.close(),
  };
}

async function sentFrames(body) {
  const { results } = body;
  // Kept as JPEGs and decoded as shown: 300 frames decoded at once would hold 150 MB or more on a phone.
  const jpegs = await Promise.all(results.map(async (r) => (await fetch(r.image)).blob()));
  (await createImageBitmap(jpegs[0])).close(); // this browser can draw them
  const last = (1000 * body.every) / body.fps; // the last frame read stands for the frames after it
  return {
    count: results.length,
    async frame(index) {
      const image = await createImageBitmap(jpegs[index]);
      const next = results[index + 1];
      return { image, frame: results[index].frame, width: results[index].width, height: results[index].height,
        ms: next ? 1000 * (next.time_s - results[index].time_s) : last, close: () => image.close() };
    },
    place: (read) => read,
    close() {},
  };
}

// Whether the frames are drawn with their boxes; if not, the <img> plays an animation (a video gets its cards alone).
async function playAnimation(file, name, body, kind) {
  const shown = clipFrames;
  let source;
  try {
    source = shown[0].image ? await sentFrames(body) : await decodedFrames(file, name);
  } catch { // neither this browser nor the server's frames could give them
    if (clipFrames !== shown) return true;
    if (kind === "animation") {
      animImage.src = URL.createObjectURL(file);
      animImage.hidden = false;
    }
    return false;
  }
  if (clipFrames !== shown) { // another file was chosen meanwhile
    source.close();
    return true;
  }
  stopAnimation();
  animation.source = source;
  animation.count = source.count;
  anim.hidden = false;
  await showAnimationFrame(0);
  return true;
}

async function showAnimationFrame(index) {
  const { source } = animation;
  clearTimeout(animation.timer);
  let shown;
  try {
    shown = await source.frame(index);
  } catch {
    return; // closed: another file is on show now
  }
  if (animation.source !== source) return shown.close();
  [anim.width, anim.height] = [shown.width, shown.height];
  anim.getContext("2d").drawImage(shown.image, 0, 0, shown.width, shown.height);
  shown.close();
  animation.index = index;
  anim.dataset.frame = String(shown.frame);
  drawOverlay(frameAt("frame", shown.frame));
  if (!animation.paused) {
    animation.timer = setTimeout(() => showAnimationFrame((index + 1) % animation.count), shown.ms < 20 ? 100 : shown.ms);
  }
}

anim.addEventListener("click", () => {
  animation.paused = !animation.paused;
  if (!animation.paused) showAnimationFrame((animation.index + 1) % animation.count);
  else clearTimeout(animation.timer);
});

// Where a person's card takes the video or animation: their first frame, paused.
function seekTo(time) {
  if (animation.source) {
    animation.paused = true;
    showAnimationFrame(animation.source.place(Math.max(clipFrames.findIndex((r) => r.time_s >= time - 1e-3), 0)));
    return;
  }
  clip.pause();
  clip.currentTime = time;
}

function showTracks(tracks, classes) {
  facesPanel.replaceChildren();
  tracks.forEach((track) => {
    const card = document.createElement("article");
    card.className = "face";
    card.setAttribute("data-testid", "face");
    card.dataset.track = String(track.track);
    card.dataset.label = track.dominant;
    card.style.setProperty("--colour", colourOf(track, 0));
    const title = document.createElement("h2");
    title.textContent = `Person #${track.track}: ${track.dominant} ${percent(track.share[track.dominant])} of the time`;
    const when = document.createElement("p");
    when.className = "muted";
    const changes = track.label_changes === 1 ? "1 change of label" : `${track.label_changes} changes of label`;
    when.textContent = `in view ${track.first_s.toFixed(1)}-${track.last_s.toFixed(1)} s, ${changes}`;
    card.append(title, when, ...classes.map((name) => barRow(name, track.share[name], name === track.dominant)));
    // A person's card takes the video to where they first appear, paused there with their box drawn.
    card.tabIndex = 0;
    card.title = `Show where person #${track.track} first appears (${track.first_s.toFixed(1)} s)`;
    const seek = () => seekTo(track.first_s);
    card.addEventListener("click", seek);
    card.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      seek();
    });
    facesPanel.append(card);
  });
}

async function analyseVideo(file, name, kind) {
  const controller = begin();
  facesPanel.replaceChildren();
  canvas.width = canvas.height = 0;
  forgetDrawn();
  const most = maxVideoFrames ? `up to ${maxVideoFrames} frames are read` : "its frames are read";
  setStatus(`Tracking the people in ${name}... (${most}; this takes a while)`);
  let body;
  try {
    body = await send(await videoRequest(kind, file), file, name, controller.signal);
  } catch (error) {
    if (error.name === "AbortError" || current !== controller) return;
    showError(error.message);
    return;
  }
  if (current !== controller) return;
  showVideo(file, name, body, kind);
  offer(body); // as /video answers: each frame's result and each person's summary
}

// A tracked video (or animated image) on show: played with its people's boxes drawn over it, a card per person.
async function showVideo(file, name, body, kind) {
  clipFrames = body.results;
  const first = clipFrames[0];
  clipBoxes.width = first.width;
  clipBoxes.height = first.height;
  canvas.hidden = true;
  clipStage.hidden = false;
  const framed = kind === "animation" || Boolean(first.image); // drawn frame by frame on the canvas
  clip.hidden = framed;
  if (!framed) clip.src = URL.createObjectURL(file);
  showTracks(body.tracks, body.classes);
  const last = clipFrames[clipFrames.length - 1];
  const counted = `${clipFrames.length} frames read${body.every > 1 ? `, every ${body.every}th` : ""}`;
  let line = body.tracks.length ? `${peopleCount(body.tracks.length)} tracked in ${name} over ${last.time_s.toFixed(1)} s (${counted})`
    : `No face found in ${name} (${counted}); try a larger, frontal, well-lit face`;
  if (body.truncated) line += `; the server reads at most ${clipFrames.length} frames: ferkit predict reads it all`;
  setStatus(line);
  if (framed && !(await playAnimation(file, name, body, kind)) && clipFrames === body.results) {
    setStatus(`${line}; this browser cannot step through its frames, so the boxes are not drawn over it`);
  }
}

// The endings `ferkit predict FOLDER` reads as images (ferkit.data.images.IMAGE_SUFFIXES; a test keeps them equal).
const IMAGE_SUFFIXES = [".avif", ".bmp", ".gif", ".heic", ".heif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"];
const isImageName = (name) => IMAGE_SUFFIXES.some((suffix) => name.toLowerCase().endsWith(suffix));
// Path order as Python sorts paths: part by part.
function byPath(a, b) {
  const [x, y] = [a.fullPath.split("/"), b.fullPath.split("/")];
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  return x.length - y.length;
}
const settle = (call) => new Promise((resolve, reject) => call(resolve, reject));

async function photosAndVideosUnder(folder) {
  const reader = folder.createReader();
  const children = [];
  // A folder's entries come a batch at a time, then an empty batch.
  for (let batch = await settle((ok, fail) => reader.readEntries(ok, fail)); batch.length;
    batch = await settle((ok, fail) => reader.readEntries(ok, fail))) children.push(...batch);
  const wanted = (name) => isImageName(name) || isVideoName(name);
  const found = await Promise.all(children.map((e) => (e.isDirectory ? photosAndVideosUnder(e) : wanted(e.name) ? [e] : [])));
  return found.flat().sort(byPath);
}

// A dropped folder is read as `ferkit predict FOLDER` reads one: the photos and videos anywhere under it in path
// order, named by their path, its other files left out. A file dropped on its own is sent whatever it is, for the server to judge.
async function dropped(transfer) {
  // Entries are taken while the drop event runs (its items are gone after it); they stay readable afterwards.
  const entries = Array.from(transfer.items || [], (item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (!entries.some((e) => e && e.isDirectory)) return named(transfer.files || []);
  const found = await Promise.all(entries.filter(Boolean).map((e) => (e.isDirectory ? photosAndVideosUnder(e) : [e])));
  return Promise.all(found.flat().map(async (e) => ({
    file: await settle((ok, fail) => e.file(ok, fail)),
    name: e.fullPath.replace(/^\//, ""),
  })));
}

// Files or folders dropped anywhere on the page, or images pasted (a screenshot, a picture copied in another tab),
// are read as if chosen with the button; the server judges what each file is, so a dropped non-image gets its
// one-line error.
document.addEventListener("dragover", (event) => {
  event.preventDefault(); // without it the browser opens the dropped file in place of the page
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) document.body.classList.remove("dragging");
});
document.addEventListener("drop", async (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  let files;
  try {
    files = await dropped(event.dataTransfer || {});
  } catch (error) {
    setStatus(`Cannot read what was dropped (${error.message}); drop the photos themselves`, true);
    return;
  }
  if (files.length) analyseFiles(files);
  else setStatus("No photo or video in what was dropped; drop photo or video files or folders of them", true);
});
document.addEventListener("paste", (event) => {
  const files = Array.from((event.clipboardData && event.clipboardData.files) || []).filter((f) => f.type.startsWith("image/"));
  if (!files.length) return; // pasted text is left to the page
  event.preventDefault();
  // Pasted images often come without a name.
  analyseFiles(files.map((file, i) => ({ file, name: file.name || (files.length > 1 ? `pasted image ${i + 1}` : "pasted image") })));
});

async function startCamera() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  } catch (error) {
    const why = {
      NotAllowedError: "permission was refused; allow the camera in the browser's site settings",
      NotFoundError: "no camera was found",
      NotReadableError: "the camera is in use by another program",
    }[error.name] || error.message;
    setStatus(`Camera unavailable: ${why}`, true);
    return;
  }
  video.srcObject = stream;
  video.hidden = false;
  cameraButton.textContent = "Stop camera";
  snapshotButton.hidden = false;
  $("live-label").hidden = false;
  setStatus("Camera on: take a snapshot, or tick Live for continuous recognition.");
}

function stopCamera() {
  stream.getTracks().forEach((track) => track.stop());
  stream = null;
  video.srcObject = null;
  video.hidden = true;
  liveToggle.checked = false;
  cameraButton.textContent = "Start camera";
  snapshotButton.hidden = true;
  $("live-label").hidden = true;
}

async function snapshot() {
  if (!video.videoWidth) {
    setStatus("The camera has not delivered a frame yet; try again in a moment", true);
    return false;
  }
  const grab = document.createElement("canvas");
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", 0.9));
  return analyse(blob, "webcam.jpg", true);
}

async function live() {
  if (liveRunning) return;
  liveRunning = true;
  // One request at a time: the next snapshot waits for the previous answer, so a slow server is not flooded.
  while (liveToggle.checked && stream) {
    if (!(await snapshot())) liveToggle.checked = false;
    await sleep(200);
  }
  liveRunning = false;
}

if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  cameraButton.addEventListener("click", () => (stream ? stopCamera() : startCamera()));
  snapshotButton.addEventListener("click", snapshot);
  liveToggle.addEventListener("change", live);
} else {
  // Browsers give cameras only to secure pages: this one opened from another device by its http:// address is not.
  cameraButton.disabled = true;
  cameraButton.title = "The camera needs a browser with getUserMedia and a secure page (https:// or localhost)";
  setStatus(`Choose photos or a video, drop them, or paste a picture. The camera needs a secure page: open this one ` +
    `as https:// (ferkit serve --certfile) or on the server's own machine as http://localhost:${location.port || 80}/ ` +
    `to use it.`);
}

["loadeddata", "seeked", "timeupdate", "play"].forEach((type) => clip.addEventListener(type, drawClipFrame));
// While playing, boxes follow every frame the browser shows, not only timeupdate's few a second.
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
  const follow = () => {
    drawClipFrame();
    clip.requestVideoFrameCallback(follow);
  };
  clip.requestVideoFrameCallback(follow);
}
clip.addEventListener("error", () => {
  if (clip.getAttribute("src")) {
    setStatus(`${statusLine.textContent}; this browser cannot play the video, so the boxes are not drawn over it`);
  }
});

document.querySelectorAll(".origin").forEach((el) => { el.textContent = window.location.origin; });
loadModelInfo();
