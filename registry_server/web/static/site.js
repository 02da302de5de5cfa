// Cargohold website: small enhancements of server-rendered pages (no framework, no inline code).
// Pages work without this file, except the upload's progress bar.
"use strict";

function showStatus(text) {
  const status = document.getElementById("copy-status");
  if (status) {
    status.textContent = text;
    setTimeout(() => { if (status.textContent === text) status.textContent = ""; }, 4000);
  }
}

// Copy buttons: shown only when the script runs; the text stays selectable anyway.
function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button.copy")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const text = button.dataset.copy || "";
      try {
        await navigator.clipboard.writeText(text);
      } catch (error) {
        const area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      document.body.dataset.copied = text;
      showStatus("Copied: " + text);
    });
  }
}

// Forms that change something for good ask first.
function setUpConfirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

// Dates are rendered in UTC; show them in the visitor's locale, UTC on hover.
function localiseTimes() {
  for (const time of document.querySelectorAll("time[datetime]")) {
    const moment = new Date(time.getAttribute("datetime"));
    if (!isNaN(moment)) {
      time.textContent = moment.toLocaleString();
    }
  }
}

function formatBytes(bytes) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return (unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
}

function formatSeconds(seconds) {
  if (!isFinite(seconds)) return "–";
  if (seconds < 60) return Math.ceil(seconds) + " s";
  return Math.floor(seconds / 60) + " min " + Math.ceil(seconds % 60) + " s";
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

// Upload: the File goes to the archives API as the request body, streamed by the browser
// (never read into memory here); progress events drive the bar.
function setUpUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("archive");
  const tag = document.getElementById("upload-tag");
  const box = document.getElementById("upload-progress");
  const bar = document.getElementById("upload-bar");
  const text = document.getElementById("upload-text");
  const failure = document.getElementById("upload-error");
  const result = document.getElementById("upload-result");
  const button = document.getElementById("upload-button");

  form.addEventListener("dragover", (event) => { event.preventDefault(); });
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) input.files = event.dataTransfer.files;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files && input.files[0];
    if (!file) return;
    let url = form.dataset.endpoint;
    if (tag.value.trim()) url += "?tag=" + encodeURIComponent(tag.value.trim());
    const request = new XMLHttpRequest();
    const started = performance.now();
    failure.hidden = true;
    result.hidden = true;
    box.hidden = false;
    bar.value = 0;
    button.disabled = true;
    request.open("POST", url);
    request.setRequestHeader("X-CSRF-Token", form.dataset.csrf);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.addEventListener("progress", (progress) => {
      if (!progress.lengthComputable) return;
      const seconds = (performance.now() - started) / 1000;
      const rate = seconds > 0 ? progress.loaded / seconds : 0;
      bar.value = Math.round((progress.loaded / progress.total) * 100);
      text.textContent = formatBytes(progress.loaded) + " of " + formatBytes(progress.total) +
        " · " + formatBytes(rate) + "/s · " + formatSeconds((progress.total - progress.loaded) / rate) + " left";
    });
    request.upload.addEventListener("load", () => {
      bar.value = 100;
      text.textContent = "Uploaded " + formatBytes(file.size) + "; importing…";
    });
    request.addEventListener("load", () => {
      button.disabled = false;
      let body = null;
      try { body = JSON.parse(request.responseText); } catch (error) { body = null; }
      if (request.status === 201 && body && body.images) {
        const rows = result.querySelector("tbody");
        rows.replaceChildren();
        for (const image of body.images) {
          const row = document.createElement("tr");
          cell(row, image.repository);
          cell(row, image.tags.join(", "));
          cell(row, image.digest);
          rows.appendChild(row);
        }
        result.hidden = false;
        text.textContent = "Done: " + body.images.length + " image(s) imported.";
      } else {
        const message = body && body.errors && body.errors.length ? body.errors[0].message : "the server answered " + request.status;
        failure.textContent = "The upload failed: " + message;
        failure.hidden = false;
      }
    });
    request.addEventListener("error", () => {
      button.disabled = false;
      failure.textContent = "The upload failed: the connection broke off.";
      failure.hidden = false;
    });
    request.send(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpConfirmations();
  localiseTimes();
  setUpUpload();
});
