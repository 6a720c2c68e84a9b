// htag's client sends an event on its WebSocket and forgets it: a socket cut before the
// event reached the app (a deploy replaces the worker, a network drops) loses the click,
// silently. Each event sent on the WebSocket is kept here until its answer comes, or an
// error the server tells (the user reads it: the event is not sent again, which would only
// replace the message). Once the socket is cut, those still unanswered go back in htag's
// queue, which its fallback sends over HTTP at once. An event that had reached the app, its
// answer lost, is not run twice: the app's process answers it without running it again
// (htagweb/host.py). In parano mode it keeps the number it had on the socket (parano.js).
(function () {
  var unanswered = new Map();  // in the order sent
  var transport = window.htag_transport;
  window.htag_transport = function (payload) {
    var id = payload && payload.data && payload.data.callback_id;
    // sent now, or queued by htag until its socket opens, then sent
    if (id && !window.use_fallback && window.ws && window.ws.readyState <= WebSocket.OPEN) unanswered.set(id, payload);
    return transport(payload);
  };
  var apply = handle_payload;
  handle_payload = function (data, source) {
    // an answer; else an error without one: the server's word on the process' end
    if (data && data.callback_id) unanswered.delete(data.callback_id);
    else if (data && data.action === "error") unanswered.clear();
    return apply(data, source);
  };
  var fall = fallback;
  fallback = function () {
    var queue = window._htag_queue;  // htag sends again what it still holds there
    unanswered.forEach(function (payload, id) { if (window._htag_callbacks[id] && queue.indexOf(payload) < 0) queue.push(payload); });
    unanswered.clear();
    return fall();
  };
  // htag falls back at once on an abnormal close only: on a normal one (1000, 1001), an
  // event left unanswered is sent again now, not at the user's next one
  if (window.ws) window.ws.addEventListener("close", function () {
    if (unanswered.size) fallback();
  });
})();
