// htag's client rebuilds the whole <body> from the state a WebSocket or SSE stream sends
// first, right after the page is shown: the same content, but new nodes. A click whose
// button went down on the old button and comes up on the new one is no click (the browser
// fires none), text typed meanwhile is gone, and focus is lost. Where the body's content
// is the same as the one on screen, the nodes on screen stay: only the body's attributes
// are set, as htag sets them; any other update goes through htag as before. (The body on
// screen ends with the blank text that followed the end of the body in the page: not content.)
(function () {
  var apply = handle_payload;
  function nodes(body) {
    var found = Array.prototype.filter.call(body.childNodes, function (n) { return n !== _error_overlay; });
    while (found.length && found[found.length - 1].nodeType === 3 && !found[found.length - 1].data.trim()) found.pop();
    return found;
  }
  function same(body, fresh) {
    var a = nodes(body), b = nodes(fresh);
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) if (!a[i].isEqualNode(b[i])) return false;
    return true;
  }
  handle_payload = function (data, source) {
    if (data && data.action === "update" && data.updates) {
      var kept = null;
      for (var id in data.updates) {
        var el = document.getElementById(id) || document.querySelector('[data-htag-id="' + id + '"]');
        if (!el || el.tagName !== "BODY") continue;
        var fresh = new DOMParser().parseFromString(data.updates[id], "text/html").body;
        if (!same(el, fresh)) continue;
        var names = new Set();
        for (var i = 0; i < fresh.attributes.length; i++) {
          el.setAttribute(fresh.attributes[i].name, fresh.attributes[i].value);
          names.add(fresh.attributes[i].name);
        }
        for (var j = el.attributes.length - 1; j >= 0; j--) if (!names.has(el.attributes[j].name)) el.removeAttribute(el.attributes[j].name);
        kept = kept || Object.assign({}, data.updates);
        delete kept[id];
      }
      if (kept) data = Object.assign({}, data, { updates: kept });
    }
    return apply(data, source);
  };
})();
