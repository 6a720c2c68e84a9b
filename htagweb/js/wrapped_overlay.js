// htag's error overlay shows messages in a <pre> that does not wrap: a sentence longer
// than the dialog is cut off at its edge (ours, like "took longer than ... Reload the page")
(function () {
  var style = document.createElement("style");
  style.textContent = "pre{white-space:pre-wrap;overflow-wrap:anywhere}";
  _error_overlay.shadowRoot.appendChild(style);
})();
