// internvl-bot chat widget: <script src="https://bot.example.com/widget.js" defer></script>
// Adds a button in the corner of the page that opens the chat in a frame served by the bot.
// The bot must list the embedding site in adapters.web.embed_origins (and be served over https).
(function () {
  "use strict";
  const script = document.currentScript;
  const origin = new URL(script ? script.src : "/", window.location.href);
  const base = origin.href.replace(/widget\.js(\?.*)?$/, "");
  const label = (script && script.dataset.label) || "Chat";
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.setAttribute("aria-expanded", "false");
  button.style.cssText = "position:fixed;right:20px;bottom:20px;z-index:2147483000;padding:10px 16px;" +
    "border:0;border-radius:22px;background:#2563eb;color:#fff;font:15px system-ui,sans-serif;cursor:pointer;" +
    "box-shadow:0 2px 10px rgba(0,0,0,.25)";
  // The chat's session, kept here (first-party storage of this site) for browsers that refuse the
  // frame its own cookies and storage; only the bot's origin may update it.
  const KEY = "internvl-bot-session:" + origin.origin;
  let saved = null;
  try { saved = window.localStorage.getItem(KEY); } catch (e) { /* storage refused */ }
  window.addEventListener("message", function (event) {
    if (event.origin !== origin.origin || !event.data || typeof event.data.internvlBotSession !== "string") return;
    try { window.localStorage.setItem(KEY, event.data.internvlBotSession); } catch (e) { /* storage refused */ }
  });
  const frame = document.createElement("iframe");
  frame.title = label;
  frame.src = base + "?embed=1" + (saved ? "#session=" + encodeURIComponent(saved) : "");
  frame.style.cssText = "position:fixed;right:20px;bottom:74px;z-index:2147483000;width:380px;height:560px;" +
    "max-width:calc(100vw - 40px);max-height:calc(100vh - 100px);border:1px solid #e5e7eb;border-radius:12px;" +
    "background:#fff;box-shadow:0 4px 24px rgba(0,0,0,.2);display:none";
  button.addEventListener("click", function () {
    const open = frame.style.display === "none";
    frame.style.display = open ? "block" : "none";
    button.setAttribute("aria-expanded", String(open));
  });
  function mount() { document.body.appendChild(frame); document.body.appendChild(button); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
