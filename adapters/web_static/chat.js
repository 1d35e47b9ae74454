// internvl-bot web chat. Plain JavaScript, no build step.
// Safety rule: text from users or the model is only ever put in the page with textContent; the one
// exception is `html` produced by the server's Markdown renderer, which has raw HTML disabled.
(function () {
  "use strict";
  const prefix = document.body.dataset.prefix || "";
  const $ = (id) => document.getElementById(id);
  const log = $("log"), text = $("text"), filesInput = $("files"), chips = $("chips"), progress = $("progress");
  const statusLine = $("status");
  let ui = {};
  let pending = [];      // files chosen for the next message
  let streaming = null;  // the bubble of the answer streaming now
  let sending = false;
  let greeting = { text: "", suggestions: [] };

  // Embedded on another site, the session cookie may be blocked as a third-party cookie: the page then
  // sends the signed session the server gave it in a header. The event stream and downloads cannot carry
  // headers: for them the page asks for a short-lived, single-purpose ticket, never putting the session
  // itself in a URL. The session is kept in this frame's storage when the browser allows it, and
  // otherwise by the widget in the host page, which hands it back in the frame's URL fragment.
  const SESSION_KEY = "internvl-bot-session";
  const fresh = document.body.dataset.session || "";
  let session = fresh;
  if (session) {
    const fromHash = (window.location.hash.match(/session=([^&]+)/) || [])[1];
    let stored = null;
    try { stored = window.localStorage.getItem(SESSION_KEY); } catch (e) { /* third-party storage blocked */ }
    session = stored || (fromHash ? decodeURIComponent(fromHash) : "") || fresh;
    keepSession();
  }

  function keepSession() {
    try { window.localStorage.setItem(SESSION_KEY, session); } catch (e) { /* the widget keeps it */ }
    if (window.parent !== window) {
      let target = "*";
      try { target = new URL(document.referrer).origin; } catch (e) { /* no referrer */ }
      window.parent.postMessage({ internvlBotSession: session }, target);
    }
  }

  function api(path) { return prefix + path; }
  function headers() { return session ? { "X-InternVL-Bot-Session": session } : {}; }

  // With a cookie the URL needs nothing; with a header session, a ticket for this one purpose.
  async function ticketed(url, purpose, file) {
    if (!session) return url;
    const response = await fetch(api("/api/tickets"), {
      method: "POST", credentials: "same-origin",
      headers: Object.assign({ "X-InternVL-Bot": "1", "Content-Type": "application/json" }, headers()),
      body: JSON.stringify({ purpose: purpose, file: file }),
    });
    if (!response.ok) return url;
    const ticket = (await response.json()).ticket;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "ticket=" + encodeURIComponent(ticket);
  }

  // A reply goes right after the question it answers (and that question's earlier replies), so queued
  // questions read as question, answer, question, answer — live and after a reload alike.
  function place(div, replyTo) {
    const question = replyTo ? log.querySelector('.msg.user[data-id="' + replyTo + '"]') : null;
    if (!question) { log.appendChild(div); return; }
    div.dataset.replyTo = String(replyTo);
    let last = question;
    while (last.nextElementSibling && last.nextElementSibling.dataset.replyTo === String(replyTo)) {
      last = last.nextElementSibling;
    }
    last.after(div);
  }

  // Thumbnails: the files being sent (from the browser's memory), or stored ones (served to this session).
  function thumbs(div, files) {
    const box = document.createElement("div");
    box.className = "thumbs";
    for (const f of files) {
      const mime = f.mime || f.type || "";
      const src = f.url || (f instanceof Blob ? URL.createObjectURL(f) : "");
      if (!src || !(mime.startsWith("image/") || mime.startsWith("video/"))) continue;
      const media = document.createElement(mime.startsWith("video/") ? "video" : "img");
      if (media.tagName === "VIDEO") { media.preload = "metadata"; media.muted = true; } else { media.alt = f.name; }
      media.src = src;
      media.title = f.name;
      media.addEventListener("error", () => media.remove());
      box.appendChild(media);
    }
    if (box.childElementCount) div.appendChild(box);
  }

  // 👍/👎 under an answer (``question``: the id of the question it answers): two real buttons (Tab, Enter,
  // Space), named in the page's language; once pressed they give way to a short thanks read out by screen readers.
  function rateButtons(div, question) {
    if (!question || div.querySelector(".rate")) return;
    const box = document.createElement("div");
    box.className = "rate";
    box.setAttribute("role", "group");
    [["up", "👍", ui.feedback_up], ["down", "👎", ui.feedback_down]].forEach(([rating, face, label]) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "rate-" + rating;
      b.textContent = face;
      b.setAttribute("aria-label", label || rating);
      b.title = label || rating;
      b.addEventListener("click", async () => {
        box.querySelectorAll("button").forEach((x) => { x.disabled = true; });
        try {
          const r = await fetch(api("/api/feedback"), { method: "POST", credentials: "same-origin",
            headers: Object.assign({ "Content-Type": "application/json", "X-InternVL-Bot": "1" }, headers()),
            body: JSON.stringify({ question: question, rating: rating }) });
          if (!r.ok) throw new Error(String(r.status));
          const thanks = document.createElement("span");
          thanks.className = "rate-thanks";
          thanks.setAttribute("role", "status");
          thanks.textContent = ui.feedback_thanks || "";
          box.replaceChildren(thanks);
        } catch (e) {
          box.querySelectorAll("button").forEach((x) => { x.disabled = false; });
        }
      });
      box.appendChild(b);
    });
    div.appendChild(box);
  }

  function bubble(role, opts) {
    opts = opts || {};
    const div = document.createElement("div");
    div.className = "msg " + role + (opts.extra ? " " + opts.extra : "");
    if (opts.id) div.dataset.id = String(opts.id);
    if (opts.who) {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = opts.who;
      div.appendChild(who);
    }
    const body = document.createElement("div");
    body.className = "body";
    if (opts.html !== undefined && opts.html !== "") body.innerHTML = opts.html; else body.textContent = opts.text || "";
    div.appendChild(body);
    if (opts.files && opts.files.length) {
      const f = document.createElement("span");
      f.className = "files";
      f.textContent = opts.files.map((x) => x.name || x).join(", ");
      div.appendChild(f);
      thumbs(div, opts.files.filter((x) => typeof x !== "string"));
    }
    place(div, opts.replyTo);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  // A new conversation starts with the persona's greeting and a few questions to start from.
  function greet() {
    if (!greeting.text || log.querySelector(".msg.greeting")) return;
    const div = bubble("assistant", { text: greeting.text, extra: "greeting" });
    if (greeting.suggestions.length && !log.querySelector(".msg.user")) {
      const box = document.createElement("div");
      box.className = "suggestions";
      greeting.suggestions.forEach((question) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = question;
        b.addEventListener("click", () => send(question));
        box.appendChild(b);
      });
      div.appendChild(box);
    }
    log.prepend(div);
  }

  function showStatus(message) {
    statusLine.textContent = message || "";
    statusLine.hidden = !message;
  }

  function applyUi() {
    document.querySelectorAll("[data-ui]").forEach((el) => { if (ui[el.dataset.ui]) el.textContent = ui[el.dataset.ui]; });
    document.querySelectorAll("[data-ui-placeholder]").forEach((el) => { el.placeholder = ui[el.dataset.uiPlaceholder] || ""; });
  }

  function fillSelect(select, items, current) {
    select.textContent = "";
    items.forEach((item) => {
      const option = document.createElement("option");
      option.value = item.value;
      option.textContent = item.label;
      if (item.value === current) option.selected = true;
      select.appendChild(option);
    });
  }

  async function loadSession() {
    let response = await fetch(api("/api/session"), { credentials: "same-origin", headers: headers() });
    if (response.status === 401 && session && session !== fresh) {
      session = fresh;  // the kept session expired or the key changed: start a new one
      keepSession();
      response = await fetch(api("/api/session"), { credentials: "same-origin", headers: headers() });
    }
    if (!response.ok) return;
    const s = await response.json();
    ui = s.ui || {};
    applyUi();
    if (s.title) { document.title = s.title; document.querySelector("header h1").textContent = s.title; }
    greeting = { text: s.greeting || "", suggestions: s.suggestions || [] };
    fillSelect($("persona"), s.personas.map((p) => ({ value: p.name, label: p.title })), s.persona);
    fillSelect($("language"), [{ value: "auto", label: ui.auto || "auto" }].concat(
      s.languages.map((l) => ({ value: l.code, label: l.name }))), s.language);
    $("waiting").hidden = s.mode !== "human";
    $("human").disabled = s.mode === "human";
    $("demo").hidden = !s.demo;
    window.internvlBot = { maxFileBytes: s.max_file_bytes, maxFiles: s.max_files, mode: s.mode };
  }

  async function renderRow(row, ticket) {
    if (row.role === "user") {
      if (row.button) return;  // a header button's command: the page showed what it did, not a bubble
      const files = row.files.map((f) => ({ name: f.name, mime: f.mime,
        url: f.sha256 ? api("/api/attachments/" + f.sha256) + ticket : "" }));
      bubble("user", { text: row.text, files: files, id: row.id });
    } else {
      const failed = row.error;
      const div = bubble("assistant", { html: row.html, text: row.text, who: row.author || "", replyTo: row.reply_to,
                                        extra: failed ? "error" : (row.author ? "operator" : "") });
      if (row.reply_to && !row.author) div.dataset.answer = String(row.reply_to);
      for (const f of row.files || []) {  // a picture the bot drew, stored with its answer
        if (!f.sha256 || !(f.mime || "").startsWith("image/")) continue;
        const link = document.createElement("a");
        link.href = api("/api/attachments/" + f.sha256) + ticket;
        link.target = "_blank";
        link.rel = "noopener";
        const img = document.createElement("img");
        img.className = "drawn";
        img.alt = f.name;
        img.src = link.href;
        link.appendChild(img);
        div.querySelector(".body").appendChild(link);
      }
      if (row.reply_to && !row.author && row.kind === "chat" && !failed) rateButtons(div, row.reply_to);
    }
  }

  async function loadHistory() {
    const response = await fetch(api("/api/history"), { credentials: "same-origin", headers: headers() });
    if (!response.ok) return;
    const h = await response.json();
    let ticket = "";
    if (session && h.messages.some((m) => m.files && m.files.length)) {
      const url = await ticketed(api("/api/attachments/x"), "attachments");
      ticket = url.slice(url.indexOf("?"));
    }
    log.textContent = "";
    for (const row of h.messages) await renderRow(row, ticket.startsWith("?") ? ticket : "");
    greet();
    if (h.partial) {
      streaming = bubble("assistant", { text: h.partial, extra: "streaming" });
    }
  }

  // The answer to a question, if the page shows one: a replica that took a question over from one that
  // stopped answers it again, and the page keeps one answer per question (the newest).
  function answering(replyTo, extra) {
    if (streaming) return streaming;
    let div = replyTo ? log.querySelector('.msg.assistant[data-answer="' + String(replyTo) + '"]') : null;
    if (div) {
      if (extra) div.classList.add(extra);
    } else {
      div = bubble("assistant", { text: "", extra: extra, replyTo: replyTo });
      if (replyTo) div.dataset.answer = String(replyTo);
    }
    return div;
  }

  function requestId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function onEvent(event) {
    switch (event.type) {
      case "status":
        showStatus(event.text || "…");
        break;
      case "partial":
        streaming = answering(event.reply_to, "streaming");
        streaming.querySelector(".body").textContent = event.text;
        break;
      case "chunk":
        showStatus("");
        streaming = answering(event.reply_to, "streaming");
        streaming.querySelector(".body").textContent += event.text;
        log.scrollTop = log.scrollHeight;
        break;
      case "done":
        showStatus("");
        streaming = answering(event.reply_to, "");
        streaming.classList.remove("streaming");
        streaming.querySelector(".body").innerHTML = event.html;
        if (event.outcome === "done") rateButtons(streaming, event.reply_to);
        streaming = null;
        break;
      case "stopped":
        showStatus("");
        if (streaming && !streaming.querySelector(".body").textContent) streaming.remove();
        streaming = null;
        break;
      case "notice":
        showStatus("");
        bubble("assistant", { html: event.html, text: event.text, who: event.author || "", replyTo: event.reply_to,
                              extra: event.kind === "error" ? "error" : (event.author ? "operator" : "") });
        loadSession();
        break;
      case "file": {
        const div = bubble("assistant", { text: event.caption || "", replyTo: event.reply_to });
        const link = document.createElement("a");
        link.href = event.url;
        if ((event.mime || "").startsWith("image/")) {
          // a picture the bot drew (grounding boxes): shown inline, full size in a new tab on click
          const img = document.createElement("img");
          img.className = "drawn";
          img.alt = event.caption || event.name;
          link.target = "_blank";
          link.rel = "noopener";
          link.appendChild(img);
          ticketed(event.url, "file", event.id).then((url) => { link.href = url; img.src = url; });
        } else {
          link.textContent = "⬇ " + event.name;
          link.setAttribute("download", event.name);
          ticketed(event.url, "file", event.id).then((url) => { link.href = url; });
        }
        div.querySelector(".body").appendChild(link);
        break;
      }
      default:
        break;
    }
  }

  let lost = false;
  async function connect() {
    const source = new EventSource(await ticketed(api("/api/events"), "events"));
    source.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    source.onerror = () => {
      lost = true;
      showStatus(ui.reconnecting || "Reconnecting…");
      if (session) {  // a ticket is short-lived: reconnect with a fresh one
        source.close();
        setTimeout(connect, 2000);
      }
    };
    source.onopen = () => {
      if (!lost) return;
      // Back after a restart or a network gap: answers finished meanwhile are in the history.
      lost = false;
      streaming = null;
      showStatus("");
      loadSession().then(loadHistory);
    };
  }

  function renderChips() {
    chips.textContent = "";
    pending.forEach((file, i) => {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = file.name;
      const x = document.createElement("button");
      x.type = "button";
      x.textContent = "×";
      x.onclick = () => { pending.splice(i, 1); renderChips(); };
      chip.appendChild(x);
      chips.appendChild(chip);
    });
  }

  function addFiles(list) {
    for (const file of list) pending.push(file);
    renderChips();
  }

  // Checked here before a byte is uploaded; the server checks again.
  function refusal(files) {
    const limits = window.internvlBot || {};
    if (limits.maxFiles && files.length > limits.maxFiles) {
      return (ui.too_many || "").replace("{limit}", limits.maxFiles);
    }
    const big = files.find((f) => limits.maxFileBytes && f.size > limits.maxFileBytes);
    if (big) {
      return (ui.too_big || "").replace("{name}", big.name).replace("{size}", (big.size / 1e6).toFixed(1))
        .replace("{limit}", (limits.maxFileBytes / 1e6).toFixed(1));
    }
    return "";
  }

  // ``button``: a header button's command — no bubble; what it does shows instead.
  function send(message, files, button) {
    files = files || [];
    if (sending || (!message.trim() && !files.length)) return;
    sending = true;
    $("send").disabled = true;
    const mine = button ? null : bubble("user", { text: message, files: files });
    if (mine) log.querySelectorAll(".msg.greeting .suggestions").forEach((el) => el.remove());
    // a fresh conversation starts on the page before the request goes: its notice may come back over the
    // event stream before this request's answer does, and must not be cleared with the old messages
    if (button && message === "/reset") { log.textContent = ""; greet(); }
    const form = new FormData();
    form.append("text", message);
    if (button) form.append("action", "1");
    files.forEach((f) => form.append("files", f, f.name));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", api("/api/messages"));
    xhr.setRequestHeader("X-InternVL-Bot", "1");
    // one id per message: a proxy that passes the request on again (a replica died) stores it once
    xhr.setRequestHeader("X-Request-Id", requestId());
    if (session) xhr.setRequestHeader("X-InternVL-Bot-Session", session);
    if (files.length) {
      progress.hidden = false;
      progress.value = 0;
      showStatus(ui.uploading || "Uploading…");
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = Math.round(100 * e.loaded / e.total); };
    }
    xhr.onload = () => {
      progress.hidden = true;
      sending = false;
      $("send").disabled = false;
      if (xhr.status >= 400) {
        let error = "HTTP " + xhr.status;
        try { error = JSON.parse(xhr.responseText).error || error; } catch (e) { /* not JSON */ }
        showStatus("");
        bubble("assistant", { text: error, extra: "error" });
      } else {
        if (files.length) showStatus("");
        try { if (mine) mine.dataset.id = String(JSON.parse(xhr.responseText).id); } catch (e) { /* duplicate */ }
      }
    };
    xhr.onerror = () => {
      progress.hidden = true;
      sending = false;
      $("send").disabled = false;
      bubble("assistant", { text: ui.reconnecting || "Reconnecting…", extra: "error" });
    };
    xhr.send(form);
  }

  function submit(e) {
    if (e) e.preventDefault();
    const message = text.value;
    const files = pending;
    if (!message.trim() && !files.length) return;
    const refused = refusal(files);
    if (refused) {  // nothing uploaded: the files are taken off, the text stays to send again
      bubble("assistant", { text: refused, extra: "error" });
      pending = [];
      renderChips();
      return;
    }
    text.value = "";
    pending = [];
    renderChips();
    send(message, files);
  }

  $("composer").addEventListener("submit", submit);
  text.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) submit(e); });
  filesInput.addEventListener("change", () => { addFiles(filesInput.files); filesInput.value = ""; });
  $("reset").addEventListener("click", () => send("/reset", [], true));
  $("human").addEventListener("click", () => send("/human", [], true));
  $("back").addEventListener("click", () => send("/bot", [], true));
  $("persona").addEventListener("change", (e) => send("/persona " + e.target.value, [], true));
  $("language").addEventListener("change", (e) => send("/lang " + e.target.value, [], true));
  let deleteArmed = 0;
  $("delete").addEventListener("click", async () => {
    if (Date.now() - deleteArmed > 5000) {  // the first click asks, a second one within 5 s deletes
      deleteArmed = Date.now();
      $("delete").textContent = ui.delete_confirm || "?";
      setTimeout(() => { $("delete").textContent = ui.delete || ""; }, 5000);
      return;
    }
    deleteArmed = 0;
    const response = await fetch(api("/api/conversation"), { method: "DELETE", credentials: "same-origin",
      headers: Object.assign({ "X-InternVL-Bot": "1" }, headers()) });
    if (response.ok) {
      $("delete").textContent = ui.delete || "";
      log.textContent = "";
      await loadSession();
      greet();
    }
  });
  ["dragenter", "dragover"].forEach((name) => document.body.addEventListener(name, (e) => {
    e.preventDefault();
    $("composer").classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => document.body.addEventListener(name, (e) => {
    e.preventDefault();
    $("composer").classList.remove("dragging");
  }));
  document.body.addEventListener("drop", (e) => { if (e.dataTransfer && e.dataTransfer.files) addFiles(e.dataTransfer.files); });

  loadSession().then(loadHistory).then(connect);
})();
