window.rewriterLoaded = true;
