/* htagweb parano client: crypto/PROTOCOL.md, version 1, on WebCrypto only.
 *
 * Runs in the bootstrap page: key exchange (or the ticket kept in IndexedDB),
 * the app's page fetched through an encrypted channel, then WebSocket,
 * EventSource and fetch replaced by wrappers that speak the protocol, and the
 * page installed with document.write (the wrappers, being window globals, stay).
 * It never falls back to plaintext.
 */
(function () {
  "use strict";
  var CFG = window.HTAGWEB_PARANO || {};
  var enc = new TextEncoder();
  var dec = new TextDecoder("utf-8", { fatal: true });
  var LABEL = enc.encode("htagweb-parano/1");
  var VERSION = 1, HELLO = 1, SERVER_HELLO = 2, OPEN = 0x10, DATA = 0x11;
  var C2S = enc.encode(">"), S2C = enc.encode("<");
  var subtle = window.crypto && window.crypto.subtle;
  var RealWebSocket = window.WebSocket, RealEventSource = window.EventSource, realFetch = window.fetch.bind(window);

  // --- bytes ---------------------------------------------------------------
  function concat() {
    var parts = Array.prototype.slice.call(arguments), size = 0, offset = 0;
    parts.forEach(function (p) { size += p.length; });
    var out = new Uint8Array(size);
    parts.forEach(function (p) { out.set(p, offset); offset += p.length; });
    return out;
  }
  function u64(n) { var b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(n)); return b; }
  function u16(n) { return new Uint8Array([n >> 8, n & 255]); }
  function readU64(b, at) { return Number(new DataView(b.buffer, b.byteOffset).getBigUint64(at)); }
  function b64(bytes) { var s = ""; bytes.forEach(function (x) { s += String.fromCharCode(x); }); return btoa(s); }
  function unb64(text) { return Uint8Array.from(atob(text), function (c) { return c.charCodeAt(0); }); }
  function b64url(bytes) { return b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
  function random(n) { return window.crypto.getRandomValues(new Uint8Array(n)); }

  function ParanoFailure(code, reason) { this.code = code; this.reason = reason; }
  ParanoFailure.prototype.toString = function () { return "parano " + this.code + ": " + this.reason; };

  // --- primitives (§2, §4) -------------------------------------------------
  async function sha256(data) { return new Uint8Array(await subtle.digest("SHA-256", data)); }
  async function hkdfBits(ikmKey, salt, info) {
    return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: salt, info: info }, ikmKey, 256));
  }
  function importHkdf(raw) { return subtle.importKey("raw", raw, "HKDF", false, ["deriveBits", "deriveKey"]); }
  function transcriptHash(hello, serverPub, expires) { return sha256(concat(LABEL, hello, serverPub, u64(expires))); }
  async function verifySignature(spki, signature, th) {
    var key = await subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
    return subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, signature, concat(LABEL, enc.encode(" signature"), th));
  }
  async function sessionKeys(zRaw, th) {
    var z = await importHkdf(zRaw);
    var c2s = await hkdfBits(z, th, concat(LABEL, enc.encode(" c2s")));
    var s2c = await hkdfBits(z, th, concat(LABEL, enc.encode(" s2c")));
    return { c2sRaw: c2s, s2cRaw: s2c, c2s: await importHkdf(c2s), s2c: await importHkdf(s2c) };
  }
  function channelKey(sessionKey, channelId, kind, usage, extractable) {
    var info = concat(LABEL, enc.encode(" channel " + kind));
    return subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: channelId, info: info }, sessionKey,
      { name: "AES-GCM", length: 256 }, !!extractable, [usage]);
  }
  function aad(kind, direction, channelId, counter) { return concat(LABEL, enc.encode(kind), direction, channelId, u64(counter)); }
  function nonce(counter) { return concat(new Uint8Array(4), u64(counter)); }
  async function sealBox(key, kind, direction, channelId, counter, plaintext) {
    var ct = await subtle.encrypt({ name: "AES-GCM", iv: nonce(counter), additionalData: aad(kind, direction, channelId, counter) }, key, plaintext);
    return concat(u64(counter), new Uint8Array(ct));
  }
  async function openBox(key, kind, direction, channelId, expected, box) {
    if (box.length < 24) throw new ParanoFailure("malformed", "box too short");
    var counter = readU64(box, 0);
    if (counter !== expected) throw new ParanoFailure("integrity", "message " + counter + " where " + expected + " was due");
    try {
      return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: nonce(counter), additionalData: aad(kind, direction, channelId, counter) }, key, box.slice(8)));
    } catch (e) { throw new ParanoFailure("integrity", "authentication failed"); }
  }

  // --- where the server is ---------------------------------------------------
  var server = CFG.server ? new URL(CFG.server) : null;        // a kiosk names its server; else same origin
  var origin = server ? server.origin : location.origin;
  var appPath = server ? server.pathname : location.pathname;
  var credentials = server ? "omit" : "same-origin";
  var pageBase = location.pathname.replace(/\/?$/, "/"), appBase = appPath.replace(/\/?$/, "/");
  function serverPath(path) {  // htag builds its URLs from location: map the kiosk file's path onto the app's
    if (!server) return path;
    if (path === location.pathname) return appPath;
    if (path.indexOf(pageBase) === 0) return appBase + path.slice(pageBase.length);
    return path;
  }
  function ours(url) {  // the path (and query) of a URL of our server, or null
    var u = new URL(url, location.href);
    if (server ? (u.origin === origin || u.protocol === "file:" || u.protocol === location.protocol && u.host === location.host)
               : u.origin === location.origin) return serverPath(u.pathname) + u.search;
    return null;
  }

  // --- session: ticket and keys, kept in IndexedDB (§2, §3) -------------------
  function store(mode, action) {
    return new Promise(function (resolve, reject) {
      var open = indexedDB.open("htagweb-parano", 1);
      open.onupgradeneeded = function () { open.result.createObjectStore("tickets"); };
      open.onerror = function () { reject(open.error); };
      open.onsuccess = function () {
        var tx = open.result.transaction("tickets", mode), req = action(tx.objectStore("tickets"));
        tx.oncomplete = function () { open.result.close(); resolve(req.result); };
        tx.onerror = function () { open.result.close(); reject(tx.error); };
      };
    });
  }
  var storeKey = origin + "|" + CFG.identity;
  var current = null;
  async function keyExchange() {
    var pair = await subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]);
    var clientPub = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
    var hello = concat(new Uint8Array([VERSION, HELLO]), clientPub, enc.encode(origin));
    var response = await realFetch(origin + "/_htagweb/kx", { method: "POST", body: hello, credentials: credentials,
      headers: { "content-type": "application/octet-stream" } });
    if (!response.ok) throw await protocolError(response);
    var answer = new Uint8Array(await response.arrayBuffer());
    if (answer.length < 2 + 65 + 8 + 64 + 32 || answer[0] !== VERSION || answer[1] !== SERVER_HELLO)
      throw new ParanoFailure("malformed", "not a server hello");
    var serverPub = answer.slice(2, 67), expires = readU64(answer, 67), signature = answer.slice(75, 139);
    var th = await transcriptHash(hello, serverPub, expires);
    if (!(await verifySignature(unb64(CFG.identity), signature, th)))
      throw new ParanoFailure("identity", "the server could not prove it holds the expected identity key: refusing to talk to it");
    var peer = await subtle.importKey("raw", serverPub, { name: "ECDH", namedCurve: "P-256" }, false, []);
    var z = new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, pair.privateKey, 256));
    var keys = await sessionKeys(z, th);
    var session = { ticket: answer.slice(139), expires: expires, c2s: keys.c2s, s2c: keys.s2c };
    await store("readwrite", function (s) { return s.put(session, storeKey); }).catch(function () {});
    return session;
  }
  async function session(renew) {
    if (renew) { current = null; await store("readwrite", function (s) { return s.delete(storeKey); }).catch(function () {}); }
    if (current && current.expires > Date.now() / 1000 + 60) return current;
    var kept = await store("readonly", function (s) { return s.get(storeKey); }).catch(function () { return null; });
    current = kept && kept.expires > Date.now() / 1000 + 60 ? kept : await keyExchange();
    return current;
  }
  async function protocolError(response) {
    var body = {};
    try { body = await response.json(); } catch (e) { body = { error: "malformed", reason: "HTTP " + response.status }; }
    return new ParanoFailure(body.error || "malformed", body.reason || "HTTP " + response.status);
  }

  // --- channels (§4) -------------------------------------------------------
  async function channel(sess, kind) {
    var id = random(16);
    var ch = { kind: kind, id: id, sent: 0, received: 0, ticket: sess.ticket,
      kc: await channelKey(sess.c2s, id, kind, "encrypt"), ks: await channelKey(sess.s2c, id, kind, "decrypt") };
    ch.seal = function (plaintext) { return sealBox(ch.kc, kind, C2S, id, ch.sent++, plaintext); };
    ch.open = function (message) {
      if (message.length < 2 || message[0] !== VERSION || message[1] !== DATA) return Promise.reject(new ParanoFailure("malformed", "not a data message"));
      return openBox(ch.ks, kind, S2C, id, ch.received++, message.slice(2));
    };
    ch.openMessage = function (box) {
      return concat(new Uint8Array([VERSION, OPEN]), enc.encode(kind), id, u16(ch.ticket.length), ch.ticket, box);
    };
    ch.data = function (box) { return concat(new Uint8Array([VERSION, DATA]), box); };
    return ch;
  }
  function head(method, path, headers, body) {
    return concat(enc.encode(JSON.stringify({ method: method, path: path, headers: headers || [] })), new Uint8Array([10]), body || new Uint8Array(0));
  }
  function splitHead(plaintext) {
    var at = plaintext.indexOf(10);
    return { head: JSON.parse(dec.decode(plaintext.slice(0, at))), body: plaintext.slice(at + 1) };
  }

  async function paranoFetch(method, path, headers, body, retried) {
    var sess = await session(false);
    var ch = await channel(sess, "H");
    var response = await realFetch(origin + "/_htagweb/p/http", { method: "POST", credentials: credentials,
      headers: { "content-type": "application/octet-stream" }, body: ch.openMessage(await ch.seal(head(method, path, headers, body))) });
    if (!response.ok) {
      var failure = await protocolError(response);
      if (failure.code === "ticket" && !retried) { await session(true); return paranoFetch(method, path, headers, body, true); }
      throw failure;
    }
    var inner = splitHead(await ch.open(new Uint8Array(await response.arrayBuffer())));
    var status = inner.head.status, nobody = [101, 204, 205, 304].indexOf(status) >= 0;
    return new Response(nobody ? null : inner.body, { status: status, headers: inner.head.headers });
  }

  // --- what the installed page uses instead of the network ------------------
  window.fetch = async function (input, init) {
    var request = new Request(input, init);
    var path = ours(request.url);
    if (path === null) return realFetch(input, init);
    var headers = [];
    request.headers.forEach(function (value, name) { headers.push([name, value]); });
    var body = ["GET", "HEAD"].indexOf(request.method) >= 0 ? null : new Uint8Array(await request.arrayBuffer());
    try { return await paranoFetch(request.method, path, headers, body, false); }
    catch (e) { fail(e); throw e; }
  };

  function Emitter() { this._listeners = {}; }
  Emitter.prototype.addEventListener = function (type, fn) { (this._listeners[type] = this._listeners[type] || []).push(fn); };
  Emitter.prototype.removeEventListener = function (type, fn) {
    this._listeners[type] = (this._listeners[type] || []).filter(function (f) { return f !== fn; });
  };
  Emitter.prototype._emit = function (type, event) {
    if (typeof this["on" + type] === "function") this["on" + type](event);
    (this._listeners[type] || []).forEach(function (fn) { fn(event); });
  };

  function ParanoWebSocket(url) {
    Emitter.call(this);
    var self = this, path = serverPathOfSocket(url), chain = Promise.resolve(), ch = null;
    self.url = url; self.readyState = 0; self.protocol = ""; self.binaryType = "blob"; self.bufferedAmount = 0;
    var wsOrigin = origin.replace(/^http/, "ws");
    var real = new RealWebSocket(wsOrigin + "/_htagweb/p/ws");
    real.binaryType = "arraybuffer";
    real.onopen = function () {
      chain = chain.then(async function () {
        ch = await channel(await session(false), "W");
        real.send(ch.openMessage(await ch.seal(head("GET", path, [], null))));
        self.readyState = 1;
        self._emit("open", new Event("open"));
      }).catch(function (e) { fail(e); real.close(); });
    };
    real.onmessage = function (event) {
      chain = chain.then(async function () {
        var text = dec.decode(await ch.open(new Uint8Array(event.data)));
        self._emit("message", new MessageEvent("message", { data: text }));
      }).catch(function (e) { fail(e); real.close(4422, "refused"); });
    };
    real.onerror = function () { self._emit("error", new Event("error")); };
    real.onclose = function (event) {
      self.readyState = 3;
      if (event.code >= 4400 && event.code < 4500) fail(new ParanoFailure(closeCodes[event.code] || "malformed", event.reason));
      self._emit("close", new CloseEvent("close", { code: event.code, reason: event.reason, wasClean: event.wasClean }));
    };
    self._real = real;
    self._send = function (text) {
      chain = chain.then(async function () { real.send(ch.data(await ch.seal(enc.encode(text)))); }).catch(function (e) { fail(e); });
    };
  }
  ParanoWebSocket.prototype = Object.create(Emitter.prototype);
  ParanoWebSocket.prototype.send = function (text) {
    if (this.readyState !== 1) throw new DOMException("WebSocket is not open", "InvalidStateError");
    this._send(String(text));
  };
  ParanoWebSocket.prototype.close = function (code, reason) { this.readyState = 2; this._real.close(code, reason); };
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name, i) { ParanoWebSocket[name] = i; ParanoWebSocket.prototype[name] = i; });
  var closeCodes = { 4400: "malformed", 4401: "ticket", 4403: "session", 4409: "replay", 4422: "integrity" };
  function serverPathOfSocket(url) {
    var match = /^wss?:\/\/[^\/]*(\/.*)?$/.exec(String(url));
    return serverPath(match && match[1] ? match[1] : "/");
  }

  function ParanoEventSource(url) {
    Emitter.call(this);
    var self = this, chain = Promise.resolve(), path = ours(url), real = null, ch = null;
    self.url = url; self.readyState = 0; self.withCredentials = false;
    chain = chain.then(async function () {
      ch = await channel(await session(false), "S");
      var open = ch.openMessage(await ch.seal(head("GET", path, [], null)));
      if (self.readyState === 2) return;
      real = new RealEventSource(origin + "/_htagweb/p/sse?open=" + b64url(open));
      real.onopen = function () { self.readyState = 1; self._emit("open", new Event("open")); };
      real.onmessage = function (event) {
        chain = chain.then(async function () {
          var text = dec.decode(await ch.open(unb64(event.data)));
          self._emit("message", new MessageEvent("message", { data: text }));
        }).catch(function (e) { fail(e); self.close(); });
      };
      real.onerror = function () {  // reconnecting would replay the channel: end it, htag falls back to HTTP
        self.close();
        self._emit("error", new Event("error"));
      };
    }).catch(function (e) { fail(e); self.readyState = 2; self._emit("error", new Event("error")); });
    self.close = function () { self.readyState = 2; if (real) real.close(); };
  }
  ParanoEventSource.prototype = Object.create(Emitter.prototype);
  ["CONNECTING", "OPEN", "CLOSED"].forEach(function (name, i) { ParanoEventSource[name] = i; });

  // --- telling the user ---------------------------------------------------------
  var messages = {
    ticket: "The encryption keys of this page expired or were refused by the server.",
    session: "The server says these encryption keys belong to another session.",
    replay: "The server refused a message it had already received (a replay).",
    integrity: "A message failed its integrity check: it was altered, replayed, reordered or lost on the way.",
    malformed: "A message could not be read.",
    identity: "The server could not prove its identity.",
  };
  function fail(error) {
    var failure = error instanceof ParanoFailure ? error : new ParanoFailure("malformed", String(error));
    var box = document.getElementById("htagweb-parano-failure");
    if (!box) {
      box = document.createElement("div");
      box.id = "htagweb-parano-failure";
      box.setAttribute("role", "alert");
      box.style.cssText = "position:fixed;left:0;right:0;top:0;z-index:2147483647;background:#7f1d1d;color:#fff;padding:1em;font:15px system-ui,sans-serif";
      document.documentElement.appendChild(box);  // outside <body>, which htag re-renders
    }
    box.textContent = "";
    var title = document.createElement("strong");
    title.textContent = "Secure connection problem: ";
    box.appendChild(title);
    box.appendChild(document.createTextNode((messages[failure.code] || "") + " (" + failure.reason + ") "));
    if (failure.code !== "identity") {
      var button = document.createElement("button");
      button.textContent = "New keys and reload";
      button.onclick = function () { session(true).catch(function () {}).then(function () { location.reload(); }); };
      box.appendChild(button);
    }
  }

  // --- bootstrap (§5, §7) --------------------------------------------------------
  async function start() {
    var status = document.getElementById("htagweb-parano-status");
    if (!subtle) {
      status.textContent = "";
      var title = document.createElement("h1");
      title.textContent = "This page cannot be opened securely here";
      var text = document.createElement("p");
      text.textContent = "This application encrypts every exchange in the browser (htagweb parano mode), which needs the " +
        "browser's WebCrypto, available only on HTTPS, on localhost, or from a file. This address is plain HTTP to another host, " +
        "so nothing was sent. Open it over HTTPS, or use the kiosk file provided by the administrator.";
      status.appendChild(title); status.appendChild(text);
      return;
    }
    try {
      var response = await paranoFetch("GET", appPath + (server ? server.search : location.search), [], null, false);
      var html = await response.text();
      window.WebSocket = ParanoWebSocket;
      window.EventSource = ParanoEventSource;
      document.open();
      document.write(html);
      document.close();
    } catch (e) {
      fail(e);
      if (status) status.textContent = "Not connected.";
    }
  }

  window.htagwebParano = {
    internals: { concat: concat, u64: u64, sha256: sha256, hkdfBits: hkdfBits, importHkdf: importHkdf, transcriptHash: transcriptHash,
      verifySignature: verifySignature, sessionKeys: sessionKeys, channelKey: channelKey, sealBox: sealBox, openBox: openBox },
    renew: function () { return session(true); },
  };
  if (!CFG.test) start();
})();
