// Easel's layout helpers, loaded once into the page's <head> (after shortcuts.js):
//   - on a narrow screen (a phone), Generate (the button or Ctrl+Enter) scrolls the page to the
//     tab's progress bar, with the result under it, instead of leaving it below the settings;
//   - a result shown larger than its own size (a 64 px image in a 300 px gallery) is drawn with
//     hard pixel edges (image-rendering: pixelated) instead of a blur; at or below its own size,
//     the browser's smooth scaling stays.
(function () {
  "use strict";
  if (window.easelLayout) return;
  window.easelLayout = true;

  const NARROW = "(max-width: 768px)";
  const RESULT_IMAGES = "[id$='_gallery'] img, [id$='_preview'] img";

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button[id$='_generate']") : null;
    if (button === null || !window.matchMedia(NARROW).matches) return;
    const prefix = button.id.slice(0, -"_generate".length);
    const target = document.getElementById(`${prefix}_progress`) || document.getElementById(`${prefix}_gallery`);
    if (target !== null) {
      window.setTimeout(() => target.scrollIntoView({ behavior: "smooth", block: "start" }), 50);
    }
  }, true);

  function sharpen(img) {
    if (!img.naturalWidth) return;
    const shown = img.getBoundingClientRect().width;
    img.style.imageRendering = shown > img.naturalWidth + 0.5 ? "pixelated" : "";
  }

  const resized = new ResizeObserver((entries) => entries.forEach((entry) => sharpen(entry.target)));

  // "load" does not bubble, but it can be caught on its way down
  document.addEventListener("load", (event) => {
    const img = event.target;
    if (img instanceof HTMLImageElement && img.matches(RESULT_IMAGES)) {
      sharpen(img);
      resized.observe(img);
    }
  }, true);
})();
