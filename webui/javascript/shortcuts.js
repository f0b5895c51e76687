// Easel's keyboard shortcuts and button hints, as A1111's:
//   Ctrl+Enter / Cmd+Enter  Generate in the open tab
//   Esc                     Interrupt the running job of the open tab
//   Alt+Enter               Skip the current image
//   Ctrl+Up / Ctrl+Down     in a prompt box: weight of the selected words (or the word at the
//                           cursor) up or down by 0.1: "word" -> "(word:1.1)", "(word:1.1)" -> "(word:1.2)",
//                           and back to plain "word" at 1.0
// Every button with a short label gets a tooltip (title). Loaded once into the page's <head>.
(function () {
  "use strict";
  if (window.easelShortcuts) return;
  window.easelShortcuts = true;

  const WEIGHT_STEP = 0.1;
  const HINTS = [
    ["_generate", "Generate (Ctrl+Enter)"],
    ["_interrupt", "Interrupt: stop the run, keeping nothing of the current image (Esc)"],
    ["_skip", "Skip the current image and go on with the next (Alt+Enter)"],
    ["_random_seed", "Random seed: -1, a new seed each run"],
    ["_reuse_seed", "Reuse the seed of the selected image of the last run"],
    ["_read_params", "Read generation parameters from the prompt box (an A1111 infotext) into the fields; " +
      "with an empty prompt, restore the last generation"],
    ["refresh_sd_model_checkpoint", "Rescan the model folders"],
    ["_refresh_models", "Rescan the model folders"],
    ["settings_reload_ui", "Reload the page: the tabs start from the saved settings"],
  ];

  function shown(el) {
    return el !== null && el.offsetParent !== null;
  }

  function visibleButton(suffix) {
    for (const el of document.querySelectorAll(`button[id$="_${suffix}"]`)) {
      if (shown(el)) return el;
    }
    return null;
  }

  function press(suffix, event) {
    const button = visibleButton(suffix);
    if (button === null) return;
    event.preventDefault();
    event.stopPropagation();
    button.click();
  }

  function formatWeight(weight) {
    return String(parseFloat(weight.toFixed(2)));
  }

  // [start, end) of the text inside "(...:w)" around the cursor, or null
  function weightedGroupAt(text, pos) {
    if (pos <= 0) return null;
    const open = text.lastIndexOf("(", pos - 1);
    const close = text.indexOf(")", pos);
    if (open < 0 || close < 0 || text.slice(open, pos).includes(")")) return null;
    const inner = text.slice(open + 1, close).match(/^([\s\S]*):\s*-?\d*\.?\d+$/);
    return inner ? [open + 1, open + 1 + inner[1].length] : null;
  }

  // [start, end) of the word at the cursor, or null
  function wordAt(text, pos) {
    const delimiters = /[\s,()[\]:|<>]/;
    let start = pos;
    let end = pos;
    while (start > 0 && !delimiters.test(text[start - 1])) start--;
    while (end < text.length && !delimiters.test(text[end])) end++;
    return start < end ? [start, end] : null;
  }

  function editWeight(area, delta) {
    const text = area.value;
    let start = area.selectionStart;
    let end = area.selectionEnd;
    if (start === end) {
      const range = weightedGroupAt(text, start) || wordAt(text, start);
      if (range === null) return false;
      [start, end] = range;
    }
    while (start < end && /\s/.test(text[start])) start++;
    while (end > start && /\s/.test(text[end - 1])) end--;
    if (start === end) return false;
    const whole = text.slice(start, end).match(/^\(([\s\S]*):\s*-?\d*\.?\d+\)$/);
    if (whole) { // the selection is a whole "(words:w)": edit it in place
      start += 1;
      end = start + whole[1].length;
    }
    const inner = text.slice(start, end);
    const after = text.slice(end).match(/^:\s*(-?\d*\.?\d+)\)/);
    let value;
    let selection;
    if (text[start - 1] === "(" && after) {
      const weight = parseFloat(after[1]) + delta;
      const rest = text.slice(end + after[0].length);
      if (Math.abs(weight - 1) < 1e-6) {
        value = text.slice(0, start - 1) + inner + rest;
        selection = [start - 1, start - 1 + inner.length];
      } else {
        value = text.slice(0, end) + ":" + formatWeight(weight) + ")" + rest;
        selection = [start, end];
      }
    } else {
      value = text.slice(0, start) + "(" + inner + ":" + formatWeight(1 + delta) + ")" + text.slice(end);
      selection = [start + 1, end + 1];
    }
    area.value = value;
    area.setSelectionRange(selection[0], selection[1]);
    area.dispatchEvent(new Event("input", { bubbles: true })); // Gradio takes the new value
    return true;
  }

  function isPromptBox(el) {
    return el instanceof HTMLTextAreaElement && el.closest('[id$="_prompt"]') !== null;
  }

  document.addEventListener("keydown", function (event) {
    const ctrl = event.ctrlKey || event.metaKey;
    if (event.key === "Enter" && ctrl && !event.altKey && !event.shiftKey) {
      press("generate", event);
    } else if (event.key === "Enter" && event.altKey && !ctrl) {
      press("skip", event);
    } else if (event.key === "Escape") {
      press("interrupt", event);
    } else if (ctrl && (event.key === "ArrowUp" || event.key === "ArrowDown") && isPromptBox(event.target)) {
      if (editWeight(event.target, event.key === "ArrowUp" ? WEIGHT_STEP : -WEIGHT_STEP)) {
        event.preventDefault();
      }
    }
  }, true);

  function addHints(root) {
    for (const [suffix, hint] of HINTS) {
      for (const el of root.querySelectorAll(`button[id$="${suffix}"]:not([title])`)) {
        el.title = hint;
      }
    }
  }

  function start() {
    addHints(document);
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; addHints(document); });
    }).observe(document.body, { childList: true, subtree: true });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
