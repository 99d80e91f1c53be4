// The page of `deeplab serve` (keras_deeplab/serving/page.py): sends a chosen or dropped image to the REST API
// (POST /v1/models/{name}/versions/{v}:predict, serving_default) and draws the returned labels.
"use strict";

const page = {
  listing: null,  // /page/models.json: {models: [{name, versions: {version: legend}}]}
  requests: 0,  // the latest prediction request; older answers are dropped
};

const $ = (id) => document.getElementById(id);

function showStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function getJson(url, options) {
  // The JSON body of a request; an Error with TF Serving's {"error": ...} message when it fails.
  const response = await fetch(url, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error(`${response.status}: ${(body && body.error) || response.statusText}`);
  }
  return body;
}

function modelUrl(name) {
  return `/v1/models/${encodeURIComponent(name)}`;
}

async function loadModels() {
  // Reads the models (keeping the selected one when it is still served), then the selected model's versions.
  const selected = $("model").value;
  page.listing = await getJson("/page/models.json");
  const names = page.listing.models.map((model) => model.name);
  $("model").replaceChildren(...names.map((name) => new Option(name, name)));
  if (!names.length) {
    showStatus("No model is configured.", true);
    return;
  }
  $("model").value = names.includes(selected) ? selected : names[0];
  await loadVersions();
}

async function loadVersions() {
  // Lists the selected model's versions from its REST status; only AVAILABLE ones can be chosen (the newest first).
  const name = $("model").value;
  const selected = $("version").value;
  let states;
  try {
    states = (await getJson(modelUrl(name))).model_version_status;
  } catch (error) {
    $("version").replaceChildren();
    showStatus(`Model ${name}: ${error.message}`, true);
    return;
  }
  const options = states.map((entry) => {
    const option = new Option(`${entry.version} (${entry.state})`, entry.version);
    option.disabled = entry.state !== "AVAILABLE";
    return option;
  });
  $("version").replaceChildren(...options);
  const available = options.filter((option) => !option.disabled).map((option) => option.value);
  if (!available.length) {
    showStatus(`Model ${name} has no available version yet; press Refresh.`, true);
    return;
  }
  $("version").value = available.includes(selected) ? selected : available[0];
  showReady();
}

function showReady() {
  // Says which version the next image goes to, and why its names or colours are defaults if its info was unusable.
  const legend = legendOf($("model").value, $("version").value);
  const note = legend && legend.note ? ` Export info: ${legend.note}; default names or colours used.` : "";
  showStatus(`Model ${$("model").value}, version ${$("version").value}: choose or drop an image.${note}`);
}

function legendOf(name, version) {
  // The class names and colours of a served version (the version folder's export info, or the defaults).
  const model = page.listing.models.find((entry) => entry.name === name);
  return model && model.versions[version];
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  const chunks = [];
  for (let start = 0; start < bytes.length; start += 0x8000) {
    chunks.push(String.fromCharCode.apply(null, bytes.subarray(start, start + 0x8000)));
  }
  return btoa(chunks.join(""));
}

async function predict(file) {
  // Sends one image file through the REST API and shows the result (answers to superseded requests are dropped).
  if (!file) {
    return;
  }
  if (!file.type.startsWith("image/")) {
    showStatus(`${file.name} is not an image (type ${file.type || "unknown"}).`, true);
    return;
  }
  const name = $("model").value;
  const version = $("version").value;
  if (!name || !version) {
    showStatus("No available model version to send the image to; press Refresh.", true);
    return;
  }
  let legend = legendOf(name, version);
  if (!legend) {  // a version folder that appeared after the listing was read
    await loadModels();
    legend = legendOf(name, version);
  }
  if (!legend) {
    showStatus(`Model ${name} version ${version} is no longer listed; press Refresh.`, true);
    return;
  }
  const request = ++page.requests;
  const url = `${modelUrl(name)}/versions/${encodeURIComponent(version)}:predict`;
  const body = JSON.stringify({signature_name: "serving_default",
                               instances: [{b64: base64(await file.arrayBuffer())}]});
  showStatus(`Sending ${file.name} to ${name} version ${version}\u2026`);
  $("endpoint").textContent = `POST ${url}`;
  let reply;
  const start = performance.now();
  try {
    reply = await getJson(url, {method: "POST", headers: {"Content-Type": "application/json"}, body});
  } catch (error) {
    if (request === page.requests) {
      showStatus(`${file.name}: ${error.message}`, true);
    }
    return;
  }
  const milliseconds = performance.now() - start;
  if (request !== page.requests) {
    return;
  }
  await showPhoto(file);
  const prediction = reply.predictions[0];
  const counts = drawOverlay(prediction.labels, prediction.image_size, legend.colors);
  showLegend(counts, legend);
  $("latency").textContent = `${milliseconds.toFixed(0)} ms (request to reply, measured here)`;
  $("latency").dataset.ms = milliseconds.toFixed(1);
  $("size").textContent = `${prediction.image_size[1]} \u00d7 ${prediction.image_size[0]} px, ${file.name}`;
  $("served").textContent = `${name}, version ${version}`;
  $("result").hidden = false;
  showStatus(`${file.name}: done.`);
  document.body.dataset.results = String(Number(document.body.dataset.results || 0) + 1);
}

function showPhoto(file) {
  // Shows the image sent (decoded by the browser) under the overlay; resolves once it is loaded.
  const photo = $("photo");
  if (photo.src) {
    URL.revokeObjectURL(photo.src);
  }
  return new Promise((resolve) => {
    photo.onload = resolve;
    photo.onerror = resolve;  // the labels are still shown
    photo.src = URL.createObjectURL(file);
  });
}

function drawOverlay(labels, imageSize, colors) {
  // Paints each pixel of the label map (cropped to image_size) opaque in its class colour on the overlay canvas;
  // returns the pixel count of each class id.
  const [height, width] = imageSize;
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const counts = new Map();
  for (let y = 0; y < height; y++) {
    const row = labels[y];
    for (let x = 0; x < width; x++) {
      const label = row[x];
      const color = colors[label % colors.length];
      const offset = 4 * (y * width + x);
      image.data[offset] = color[0];
      image.data[offset + 1] = color[1];
      image.data[offset + 2] = color[2];
      image.data[offset + 3] = 255;
      counts.set(label, (counts.get(label) || 0) + 1);
    }
  }
  context.putImageData(image, 0, 0);
  return counts;
}

function showLegend(counts, legend) {
  // One row per class present, the largest share first: colour, name, share of the image's pixels.
  let total = 0;
  counts.forEach((count) => { total += count; });
  const rows = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0]).map(([label, count]) => {
    const row = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [red, green, blue] = legend.colors[label % legend.colors.length];
    swatch.style.backgroundColor = `rgb(${red}, ${green}, ${blue})`;
    const name = (legend.class_names && legend.class_names[label]) || `class ${label}`;
    const share = count / total;
    const cells = [swatch, document.createTextNode(name), document.createTextNode(`${(100 * share).toFixed(2)} %`)];
    for (const content of cells) {
      row.insertCell().append(content);
    }
    Object.assign(row.dataset, {label: String(label), pixels: String(count), share: String(share)});
    return row;
  });
  $("legend").tBodies[0].replaceChildren(...rows);
}

function setOpacity() {
  $("overlay").style.opacity = $("opacity").value;
}

function setUp() {
  $("model").addEventListener("change", () => loadVersions());
  $("version").addEventListener("change", showReady);
  $("refresh").addEventListener("click", () => loadModels().catch((error) => showStatus(error.message, true)));
  $("file").addEventListener("change", (event) => predict(event.target.files[0]));
  $("opacity").addEventListener("input", setOpacity);
  const zone = $("dropzone");
  // Anywhere on the page: a dropped file is sent, never opened by the browser in place of the page.
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  window.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) {
      zone.classList.remove("over");
    }
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    predict(event.dataTransfer.files[0]);
  });
  setOpacity();
  loadModels().catch((error) => showStatus(`Cannot read the models: ${error.message}`, true));
}

setUp();
