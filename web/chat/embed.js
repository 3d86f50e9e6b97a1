/*
 * Aisle chat for a store's own web site. Add one line to the page:
 *
 *   <script src="https://store-box/chat/embed.js" async></script>
 *
 * It adds a floating chat button; tapping it opens the store's chat (`/chat` on the same
 * appliance the script came from) in a panel, full screen on a phone. Nothing else is loaded:
 * the button's look lives in a shadow root, so the site's styles and this one do not mix.
 * Optional attributes on the script tag: data-label (button text), data-lang ("en" | "zh-CN").
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.src || window.__aisleChatEmbed) return;
  window.__aisleChatEmbed = true;
  var origin = new URL(script.src, location.href).origin;
  var zh = (script.getAttribute("data-lang") || navigator.language || "").toLowerCase().indexOf("zh") === 0;
  var label = script.getAttribute("data-label") || (zh ? "在线咨询" : "Chat with us");
  var closeLabel = zh ? "关闭聊天" : "Close chat";
  var frameTitle = zh ? "门店聊天" : "Store chat";

  var css = [
    ":host { all: initial; }",
    ".open { position: fixed; right: 20px; bottom: 20px; z-index: 2147483646; display: flex; align-items: center; gap: 8px;",
    "  min-height: 52px; padding: 0 20px 0 16px; border: none; border-radius: 26px; background: #0f6fde; color: #fff;",
    "  font: 600 16px system-ui, -apple-system, 'Segoe UI', 'PingFang SC', 'Microsoft YaHei', sans-serif;",
    "  box-shadow: 0 4px 16px rgba(0,0,0,.25); cursor: pointer; }",
    ".open:focus-visible, .close:focus-visible { outline: 3px solid #8ab8f0; outline-offset: 2px; }",
    ".open svg { width: 22px; height: 22px; fill: currentColor; }",
    ".panel { position: fixed; right: 20px; bottom: 20px; z-index: 2147483647; width: 380px; height: min(640px, calc(100vh - 40px));",
    "  border-radius: 14px; overflow: hidden; background: #fff; box-shadow: 0 8px 32px rgba(0,0,0,.3); display: flex; flex-direction: column; }",
    ".panel[hidden], .open[hidden] { display: none; }",
    ".bar { display: flex; align-items: center; background: #0f6fde; color: #fff; font: 600 15px system-ui, -apple-system, 'Segoe UI', 'PingFang SC', 'Microsoft YaHei', sans-serif; }",
    ".bar span { flex: 1; padding: 0 16px; }",
    ".close { min-width: 44px; min-height: 44px; border: none; background: transparent; color: #fff; font: 28px/1 system-ui, sans-serif; cursor: pointer; }",
    "iframe { flex: 1; width: 100%; border: 0; }",
    "@media (max-width: 600px) { .panel { inset: 0; right: 0; bottom: 0; width: 100%; height: 100%; border-radius: 0; } }"
  ].join("\n");

  var host = document.createElement("div");
  host.setAttribute("data-aisle-chat", "");
  var root = host.attachShadow({ mode: "open" });
  var style = document.createElement("style");
  style.textContent = css;

  var open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.setAttribute("data-testid", "embed-open");
  open.setAttribute("aria-haspopup", "dialog");
  open.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16v12H7l-3 3z"/></svg>';
  open.appendChild(document.createTextNode(label));

  var panel = document.createElement("div");
  panel.className = "panel";
  panel.hidden = true;
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", frameTitle);
  var bar = document.createElement("div");
  bar.className = "bar";
  var close = document.createElement("button");
  close.type = "button";
  close.className = "close";
  close.setAttribute("data-testid", "embed-close");
  close.setAttribute("aria-label", closeLabel);
  close.textContent = "×";
  var title = document.createElement("span");
  title.textContent = label;
  bar.appendChild(title);
  bar.appendChild(close);
  panel.appendChild(bar);

  var frame = null; // created on first open: a page that never opens the chat costs nothing

  open.addEventListener("click", function () {
    if (!frame) {
      frame = document.createElement("iframe");
      frame.setAttribute("data-testid", "embed-frame");
      frame.title = frameTitle;
      frame.src = origin + "/chat?embed=1";
      frame.setAttribute("allow", "clipboard-write");
      panel.appendChild(frame);
    }
    panel.hidden = false;
    open.hidden = true;
    close.focus();
  });
  close.addEventListener("click", function () {
    panel.hidden = true;
    open.hidden = false;
    open.focus();
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && !panel.hidden) close.click();
  });

  root.appendChild(style);
  root.appendChild(open);
  root.appendChild(panel);
  if (document.body) document.body.appendChild(host);
  else document.addEventListener("DOMContentLoaded", function () { document.body.appendChild(host); });
})();
