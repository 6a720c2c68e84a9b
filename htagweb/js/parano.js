/* htagweb parano client: crypto/PROTOCOL.md, version 2, on WebCrypto, or where the
 * page has none (plain HTTP to a non-local host name) on the audited noble libraries,
 * bundled by the package build (never hand-written primitives).
 *
 * Runs in the bootstrap page: key exchange (or the ticket kept in IndexedDB),
 * the app's page fetched through an encrypted channel, then WebSocket,
 * EventSource and fetch replaced by wrappers that speak the protocol, and the
 * page installed with document.write (the wrappers, being window globals, stay).
 * It never falls back to plaintext, never shows text it could not authenticate,
 * and never resends a request that may have run (§6).
 */
(function () {
  "use strict";
  var CFG = window.HTAGWEB_PARANO || {};
  var enc = new TextEncoder();
  var dec = new TextDecoder("utf-8", { fatal: true });
  var LABEL = enc.encode("htagweb-parano/2");
  var VERSION = 2, HELLO = 1, SERVER_HELLO = 2, OPEN = 0x10, DATA = 0x11, ACCEPT = 0x12, TEXT = 0, CONTROL = 1;
  var C2S = enc.encode(">"), S2C = enc.encode("<");
  var RealWebSocket = window.WebSocket, realFetch = window.fetch.bind(window);
  var NO_REFERRER = { credentials: "omit", referrerPolicy: "no-referrer", cache: "no-store" };

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
  function unhex(text) { return Uint8Array.from(text.match(/../g), function (x) { return parseInt(x, 16); }); }
  function equal(a, b) { return a.length === b.length && a.every(function (x, i) { return x === b[i]; }); }

  /* A failure. `authenticated`: the server said it inside the channel, so its reason may be shown. */
  function ParanoFailure(code, reason, authenticated) { this.code = code; this.reason = reason; this.authenticated = !!authenticated; }
  ParanoFailure.prototype.toString = function () { return "parano " + this.code + ": " + this.reason; };

  // --- primitives (§2, §4): two backends, the same operations --------------------
  /* WebCrypto wherever the page has it; where it has not (plain HTTP to a non-local host
   * name) the audited noble libraries, bundled by the package build and loaded with a
   * Subresource Integrity hash (§8). Keys are opaque to the protocol code: non-extractable
   * CryptoKeys with WebCrypto, bytes with noble. */
  var ECDH = { name: "ECDH", namedCurve: "P-256" };
  function webCrypto(subtle) {
    return {
      name: "webcrypto",
      sha256: async function (data) { return new Uint8Array(await subtle.digest("SHA-256", data)); },
      ecdhKeyPair: async function () {  // the private key is a non-extractable CryptoKey
        var pair = await subtle.generateKey(ECDH, false, ["deriveBits"]);
        return { publicKey: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)), secret: pair.privateKey };
      },
      ecdh: async function (secret, peerPublic) {
        var peer = await subtle.importKey("raw", peerPublic, ECDH, false, []);
        return new Uint8Array(await subtle.deriveBits({ name: "ECDH", public: peer }, secret, 256));
      },
      verify: async function (spki, signature, message) {
        var key = await subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
        return subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, signature, message);
      },
      hkdfKey: function (raw) { return subtle.importKey("raw", raw, "HKDF", false, ["deriveBits", "deriveKey"]); },
      hkdf: async function (key, salt, info) {
        return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: salt, info: info }, key, 256));
      },
      aesKey: function (key, salt, info, usage, extractable) {
        return subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: salt, info: info }, key,
          { name: "AES-GCM", length: 256 }, !!extractable, [usage]);
      },
      exportAes: async function (key) { return new Uint8Array(await subtle.exportKey("raw", key)); },
      encrypt: async function (key, iv, aad, plaintext) {
        return new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: iv, additionalData: aad }, key, plaintext));
      },
      decrypt: async function (key, iv, aad, ciphertext) {
        return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: iv, additionalData: aad }, key, ciphertext));
      },
    };
  }
  // the SubjectPublicKeyInfo of a P-256 key: this fixed header, then the uncompressed point
  var P256_SPKI = unhex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
  function noble(N) {
    function hkdf(key, salt, info) { return N.hkdf(N.sha256, key, salt, info, 32); }
    return {
      name: "noble",
      sha256: async function (data) { return N.sha256(data); },
      ecdhKeyPair: async function () {
        var secret = N.p256.utils.randomSecretKey();  // crypto.getRandomValues, present in every context
        return { publicKey: N.p256.getPublicKey(secret, false), secret: secret };
      },
      // the x-coordinate, as WebCrypto's deriveBits; throws on a point not on the curve
      ecdh: async function (secret, peerPublic) { return N.p256.getSharedSecret(secret, peerPublic, true).slice(1); },
      verify: async function (spki, signature, message) {
        if (spki.length !== P256_SPKI.length + 65 || !equal(spki.slice(0, P256_SPKI.length), P256_SPKI)) return false;
        try {  // WebCrypto's semantics: SHA-256 of the message, r|s, either s
          return N.p256.verify(signature, message, spki.slice(P256_SPKI.length), { prehash: true, lowS: false, format: "compact" });
        } catch (e) { return false; }
      },
      hkdfKey: async function (raw) { return raw.slice(); },
      hkdf: async function (key, salt, info) { return hkdf(key, salt, info); },
      aesKey: async function (key, salt, info) { return hkdf(key, salt, info); },
      exportAes: async function (key) { return key; },
      encrypt: async function (key, iv, aad, plaintext) { return N.gcm(key, iv, aad).encrypt(plaintext); },
      decrypt: async function (key, iv, aad, ciphertext) { return N.gcm(key, iv, aad).decrypt(ciphertext); },
    };
  }
  function loadScript(spec) {
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = spec.src;
      script.integrity = spec.integrity;  // the browser runs these exact bytes, or nothing
      script.referrerPolicy = "no-referrer";
      script.onload = resolve;
      script.onerror = function () { reject(new Error("the script did not load")); };
      document.head.appendChild(script);
    });
  }
  var backend = null;
  var ready = (async function () {
    var subtle = window.crypto && window.crypto.subtle;
    if (subtle) return (backend = webCrypto(subtle));
    if (!CFG.fallback) throw new ParanoFailure("no-crypto", "no WebCrypto, and no JS crypto fallback on this server");
    try { await loadScript(CFG.fallback); } catch (e) {
      throw new ParanoFailure("fallback-failed", "the JS crypto fallback did not load intact");
    }
    return (backend = noble(window.htagwebNoble));
  })();
  ready.catch(function () {});  // start() tells

  function sha256(data) { return backend.sha256(data); }
  function hkdfBits(key, salt, info) { return backend.hkdf(key, salt, info); }
  function importHkdf(raw) { return backend.hkdfKey(raw); }
  function transcriptHash(hello, serverPub, expires) { return sha256(concat(LABEL, hello, serverPub, u64(expires))); }
  function verifySignature(spki, signature, th) { return backend.verify(spki, signature, concat(LABEL, enc.encode(" signature"), th)); }
  async function sessionKeys(zRaw, th) {
    var z = await importHkdf(zRaw);
    var c2s = await hkdfBits(z, th, concat(LABEL, enc.encode(" c2s")));
    var s2c = await hkdfBits(z, th, concat(LABEL, enc.encode(" s2c")));
    return { c2sRaw: c2s, s2cRaw: s2c, c2s: await importHkdf(c2s), s2c: await importHkdf(s2c) };
  }
  function aesKey(sessionKey, salt, info, usage, extractable) { return backend.aesKey(sessionKey, salt, info, usage, extractable); }
  function clientKey(k_c2s, channelId, kind, extractable) {
    return aesKey(k_c2s, channelId, concat(LABEL, enc.encode(" c2s " + kind)), "encrypt", extractable);
  }
  function serverKey(k_s2c, channelId, serverNonce, kind, extractable) {
    return aesKey(k_s2c, concat(channelId, serverNonce), concat(LABEL, enc.encode(" s2c " + kind)), "decrypt", extractable);
  }
  function aad(kind, direction, channelId, counter) { return concat(LABEL, enc.encode(kind), direction, channelId, u64(counter)); }
  function nonce(counter) { return concat(new Uint8Array(4), u64(counter)); }
  async function sealBox(key, kind, direction, channelId, counter, plaintext) {
    return concat(u64(counter), await backend.encrypt(key, nonce(counter), aad(kind, direction, channelId, counter), plaintext));
  }
  async function openBox(key, kind, direction, channelId, expected, box) {
    if (box.length < 24) throw new ParanoFailure("integrity", "a message too short to be genuine");
    var counter = readU64(box, 0);
    if (counter !== expected) throw new ParanoFailure("integrity", "message " + counter + " where " + expected + " was due");
    try {
      return await backend.decrypt(key, nonce(counter), aad(kind, direction, channelId, counter), box.slice(8));
    } catch (e) { throw new ParanoFailure("integrity", "authentication failed"); }
  }

  // --- where the server is ---------------------------------------------------
  var server = CFG.server ? new URL(CFG.server) : null;        // a kiosk names its server; else same origin
  var origin = server ? server.origin : location.origin;
  /* A kiosk file holds a whole app: its query names the path of the server it shows, and
   * links within the server load the kiosk file again with theirs (keepLinksInKiosk). */
  var KIOSK_PATH = "htagweb-path";
  function kioskTarget() {
    var named = new URLSearchParams(location.search).get(KIOSK_PATH);
    var url = named ? new URL(named, origin) : null;
    return url && url.origin === origin ? url : server;  // a path of the pinned server, nothing else
  }
  var target = server ? kioskTarget() : location;
  var appPath = target.pathname, appSearch = target.search;
  var pageBase = location.pathname.replace(/\/?$/, "/"), appBase = appPath.replace(/\/?$/, "/");
  var eventPath = appBase + "event";  // where htag's client posts events (its _base_path + "event")
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

  // --- keys and session credential, kept in IndexedDB (§2, §5) -------------------
  function store(mode, action) {
    return new Promise(function (resolve, reject) {
      var open = indexedDB.open("htagweb-parano", 2);
      open.onupgradeneeded = function () {
        if (open.result.objectStoreNames.contains("tickets")) open.result.deleteObjectStore("tickets");  // version 1's
        open.result.createObjectStore("keys");
      };
      open.onerror = function () { reject(open.error); };
      open.onsuccess = function () {
        var tx = open.result.transaction("keys", mode), req = action(tx.objectStore("keys"));
        tx.oncomplete = function () { open.result.close(); resolve(req.result); };
        tx.onerror = function () { open.result.close(); reject(tx.error); };
      };
    });
  }
  function kept(name) { return store("readonly", function (s) { return s.get(storeKey + name); }).catch(function () { return null; }); }
  function keep(name, value) {
    return store("readwrite", function (s) { return value === null ? s.delete(storeKey + name) : s.put(value, storeKey + name); })
      .catch(function () {});
  }
  var storeKey = origin + "|" + CFG.identity + "|";
  var current = null, credential = null;
  async function keyExchange() {
    var pair = await backend.ecdhKeyPair();
    var hello = concat(new Uint8Array([VERSION, HELLO]), pair.publicKey, enc.encode(origin));
    var response = await realFetch(origin + "/_htagweb/kx", Object.assign({ method: "POST", body: hello,
      headers: { "content-type": "application/octet-stream" } }, NO_REFERRER));
    if (!response.ok) throw unauthenticated(response);
    var answer = new Uint8Array(await response.arrayBuffer());
    if (answer.length < 2 + 65 + 8 + 64 + 32 || answer[0] !== VERSION || answer[1] !== SERVER_HELLO)
      throw new ParanoFailure("malformed", "not a server hello");
    var serverPub = answer.slice(2, 67), expires = readU64(answer, 67), signature = answer.slice(75, 139);
    var th = await transcriptHash(hello, serverPub, expires);
    if (!(await verifySignature(unb64(CFG.identity), signature, th)))
      throw new ParanoFailure("identity", "the server could not prove it holds the expected identity key: refusing to talk to it");
    var keys = await sessionKeys(await backend.ecdh(pair.secret, serverPub), th);
    var fresh = { ticket: answer.slice(139), expires: expires, at: Date.now(), c2s: keys.c2s, s2c: keys.s2c, backend: backend.name };
    await keep("keys", fresh);
    return fresh;
  }
  async function session(renew) {
    if (credential === null) credential = (await kept("session")) || null;
    if (renew) { current = null; await keep("keys", null); }
    if (current && current.expires > Date.now() / 1000 + 60) return current;
    var stored = await kept("keys");
    var usable = stored && stored.backend === backend.name && typeof stored.at === "number" && stored.expires > Date.now() / 1000 + 60;
    current = usable ? stored : await keyExchange();
    return current;
  }
  function setCredential(value) { credential = value; return keep("session", value); }
  function unauthenticated(response) {  // anyone on the path could have written it: its words are not shown
    if (response.status === 401) { current = null; keep("keys", null); }  // the ticket may be refused: the next request re-keys
    return new ParanoFailure("unauthenticated", "HTTP " + response.status);
  }

  // --- channels (§4) -------------------------------------------------------
  async function channel(sess, kind) {
    var id = random(16);
    var ch = { kind: kind, id: id, sent: 0, received: 0, ticket: sess.ticket, ks: null,
      kc: await clientKey(sess.c2s, id, kind) };
    ch.seal = function (plaintext) { return sealBox(ch.kc, kind, C2S, id, ch.sent++, plaintext); };
    ch.openMessage = function (box) {
      return concat(new Uint8Array([VERSION, OPEN]), enc.encode(kind), id, u16(ch.ticket.length), ch.ticket, box);
    };
    ch.data = function (box) { return concat(new Uint8Array([VERSION, DATA]), box); };
    ch.open = async function (message) {  // the server's first message is an Accept: it brings its nonce, so its key
      if (ch.ks === null) {
        if (message.length < 18 || message[0] !== VERSION || message[1] !== ACCEPT) throw new ParanoFailure("integrity", "not an accept");
        ch.ks = await serverKey(sess.s2c, id, message.slice(2, 18), kind);
        return openBox(ch.ks, kind, S2C, id, ch.received++, message.slice(18));
      }
      if (message.length < 2 || message[0] !== VERSION || message[1] !== DATA) throw new ParanoFailure("integrity", "not a data message");
      return openBox(ch.ks, kind, S2C, id, ch.received++, message.slice(2));
    };
    return ch;
  }
  var pageId = b64url(random(16)), events = 0;  // this page, and its events' numbers (§7)
  function head(sess, method, path, headers, body, seq) {  // age: the Open's stamp (§4.2)
    var fields = { method: method, path: path, headers: headers || [], page: pageId, age: Date.now() - sess.at };
    if (credential) fields.session = credential;
    if (seq) fields.seq = seq;
    return concat(enc.encode(JSON.stringify(fields)), new Uint8Array([10]), body || new Uint8Array(0));
  }
  function splitHead(plaintext) {
    var at = plaintext.indexOf(10);
    return { head: JSON.parse(dec.decode(plaintext.slice(0, at))), body: plaintext.slice(at + 1) };
  }
  function control(plaintext) { return JSON.parse(dec.decode(plaintext.slice(1))); }
  function sealedFailure(error) { return new ParanoFailure(error.code, error.reason, true); }

  /* One HTTP channel. Resent only where nothing can have run: after a sealed "expired"
   * (the server checked it first), or, for the bootstrap's GET (`bootstrap`), after a
   * refused ticket. A sealed refusal is returned with the answer, for the caller to tell. */
  async function paranoFetch(method, path, headers, body, seq, bootstrap, resent) {
    var sess = await session(false);
    var ch = await channel(sess, "H");
    var open = ch.openMessage(await ch.seal(head(sess, method, path, headers, body, seq)));
    var response = await realFetch(origin + "/_htagweb/p/http", Object.assign({ method: "POST",
      headers: { "content-type": "application/octet-stream" }, body: open }, NO_REFERRER));
    if (!response.ok) {
      var failure = unauthenticated(response);
      if (bootstrap && !resent && response.status === 401) return paranoFetch(method, path, headers, body, seq, bootstrap, true);
      throw failure;
    }
    var inner = splitHead(await ch.open(new Uint8Array(await response.arrayBuffer())));
    if (inner.head.session) await setCredential(inner.head.session);
    var error = inner.head.error;
    if (error && error.code === "expired" && !resent) {
      await session(true);
      return paranoFetch(method, path, headers, body, seq, bootstrap, true);
    }
    if (error && error.code === "session") await setCredential(null);
    var status = inner.head.status, nobody = [101, 204, 205, 304].indexOf(status) >= 0;
    return { response: new Response(nobody ? null : inner.body, { status: status, headers: inner.head.headers }),
      failure: error ? sealedFailure(error) : null };
  }

  // --- what the installed page uses instead of the network ------------------
  window.fetch = function (input, init) {
    var request = new Request(input, init);
    var path = ours(request.url);
    if (path === null) return realFetch(input, init);
    // numbered now, in the order htag calls: the server delivers events in this order (§7);
    // one sent again once its WebSocket was cut keeps the number it had there
    var event = request.method === "POST" && path.split("?")[0] === eventPath;
    var seq = event ? sentOnSocket(init && init.body) || ++events : 0;
    return (async function () {
      var headers = [];
      request.headers.forEach(function (value, name) { headers.push([name, value]); });
      var body = ["GET", "HEAD"].indexOf(request.method) >= 0 ? null : new Uint8Array(await request.arrayBuffer());
      try {
        var answer = await paranoFetch(request.method, path, headers, body, seq, false, false);
        if (answer.failure) fail(answer.failure);
        return answer.response;
      } catch (e) { fail(e); throw e; }
    })();
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

  /* One sealed server message of a WebSocket or SSE channel (§4.2) for `target`: htag's text,
   * or a control: acceptance, a new credential, a close or an error. */
  async function deliver(plaintext, target) {
    if (plaintext[0] === TEXT) { target._emit("message", new MessageEvent("message", { data: dec.decode(plaintext.slice(1)) })); return; }
    var message = control(plaintext);
    if (message.accepted) { target.readyState = 1; target._emit("open", new Event("open")); }
    if (message.session) await setCredential(message.session);
    if (message.error) { target._closing = { code: 4400, reason: message.error.reason }; fail(sealedFailure(message.error)); }
    if (message.close !== undefined) {
      target._closing = { code: message.close, reason: message.reason || "" };
      if (message.close >= 4400 && message.close < 4500) fail(new ParanoFailure("refused", message.reason || "", true));
    }
  }

  function ParanoWebSocket(url) {
    Emitter.call(this);
    var self = this, path = serverPathOfSocket(url), chain = Promise.resolve(), ch = null;
    self.url = url; self.readyState = 0; self.protocol = ""; self.binaryType = "blob"; self.bufferedAmount = 0; self._closing = null;
    var real = new RealWebSocket(origin.replace(/^http/, "ws") + "/_htagweb/p/ws");
    real.binaryType = "arraybuffer";
    real.onopen = function () {
      chain = chain.then(async function () {
        var sess = await session(false);
        ch = await channel(sess, "W");
        real.send(ch.openMessage(await ch.seal(head(sess, "GET", path, [], null))));
      }).catch(function (e) { fail(e); real.close(); });
    };
    real.onmessage = function (event) {
      chain = chain.then(async function () {
        await deliver(await ch.open(new Uint8Array(event.data)), self);
      }).catch(function (e) { fail(e); real.close(); });
    };
    real.onerror = function () { self._emit("error", new Event("error")); };
    real.onclose = function () {
      chain.then(function () {  // after the messages before it: a sealed close says what happened, a clear one says nothing
        var closing = self._closing || { code: 1006, reason: "" };
        self.readyState = 3;
        self._emit("close", new CloseEvent("close", { code: closing.code, reason: closing.reason, wasClean: !!self._closing }));
      });
    };
    self._real = real;
    self._send = function (text, seq) {
      chain = chain.then(async function () {
        real.send(ch.data(await ch.seal(concat(new Uint8Array([TEXT]), u64(seq), enc.encode(text)))));
      }).catch(function (e) { fail(e); });
    };
  }
  ParanoWebSocket.prototype = Object.create(Emitter.prototype);
  ParanoWebSocket.prototype.send = function (text) {
    if (this.readyState !== 1) throw new DOMException("WebSocket is not open", "InvalidStateError");
    var seq = ++events, id = callbackId(text);
    if (id) {
      onSocket.set(id, seq);
      if (onSocket.size > SOCKET_EVENTS_KEPT) onSocket.delete(onSocket.keys().next().value);
    }
    this._send(String(text), seq);
  };
  // the numbers of the last events sent on a WebSocket, by htag's callback id: one sent again
  // over HTTP once its socket was cut (resend_cut_events.js) keeps its number (§7)
  var onSocket = new Map(), SOCKET_EVENTS_KEPT = 256;
  function callbackId(text) {
    try {
      var data = JSON.parse(text).data;
      return data && typeof data.callback_id === "string" ? data.callback_id : null;
    } catch (e) { return null; }
  }
  function sentOnSocket(body) {
    var id = typeof body === "string" ? callbackId(body) : null, seq = id && onSocket.get(id);
    if (seq) onSocket.delete(id);
    return seq || 0;
  }
  ParanoWebSocket.prototype.close = function (code, reason) { this.readyState = 2; this._real.close(code, reason); };
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name, i) { ParanoWebSocket[name] = i; ParanoWebSocket.prototype[name] = i; });
  function serverPathOfSocket(url) {
    var match = /^wss?:\/\/[^\/]*(\/.*)?$/.exec(String(url));
    return serverPath(match && match[1] ? match[1] : "/");
  }

  /* htag's EventSource, as a POST whose answer streams (§4.3): the ticket is never in a URL. */
  function ParanoEventSource(url) {
    Emitter.call(this);
    var self = this, path = ours(url), abort = new AbortController();
    self.url = url; self.readyState = 0; self.withCredentials = false; self._closing = null;
    self.close = function () { self.readyState = 2; abort.abort(); };
    (async function () {
      var sess = await session(false), ch = await channel(sess, "S");
      var open = ch.openMessage(await ch.seal(head(sess, "GET", path, [], null)));
      var response = await realFetch(origin + "/_htagweb/p/sse", Object.assign({ method: "POST", body: open, signal: abort.signal,
        headers: { "content-type": "application/octet-stream" } }, NO_REFERRER));
      if (!response.ok) throw unauthenticated(response);
      var reader = response.body.getReader(), text = "", chain = Promise.resolve();
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) break;
        text += dec.decode(chunk.value, { stream: true });
        var events = text.split("\n\n");
        text = events.pop();
        for (var i = 0; i < events.length; i++) {
          if (events[i].indexOf("data: ") !== 0) continue;
          await deliver(await ch.open(unb64(events[i].slice(6))), self);
        }
      }
      throw new Error("the stream ended");
    })().catch(function (e) {
      if (self.readyState === 2) return;  // closed by htag
      if (e instanceof ParanoFailure) fail(e);
      self.readyState = 2;
      self._emit("error", new Event("error"));  // htag falls back to plain HTTP events
    });
  }
  ParanoEventSource.prototype = Object.create(Emitter.prototype);
  ["CONNECTING", "OPEN", "CLOSED"].forEach(function (name, i) { ParanoEventSource[name] = i; });

  // --- telling the user ---------------------------------------------------------
  var messages = {
    expired: "The encryption keys of this page expired.",
    session: "The server refused this page's session.",
    replay: "The server refused a message it had already received (a replay).",
    integrity: "A message failed its integrity check: it was altered, replayed, reordered or lost on the way.",
    order: "An event of this page arrived out of order, or never arrived.",
    unavailable: "The server cannot check this page's messages now (its session store is unavailable): try again in a moment.",
    malformed: "A message could not be read.",
    refused: "The server closed the connection.",
    identity: "The server could not prove its identity.",
    unauthenticated: "The connection was refused or altered on the way.",
  };
  function fail(error) {
    var failure = error instanceof ParanoFailure ? error : new ParanoFailure("malformed", String(error));
    onSocket.clear();  // the refusal stands: no event of a socket is sent again under its number
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
    // a reason is the server's own sealed words, or this script's: never text from an unauthenticated answer
    box.appendChild(document.createTextNode((messages[failure.code] || messages.malformed) + " (" + failure.reason + ") "));
    if (failure.code !== "identity") {
      var button = document.createElement("button");
      button.textContent = "New keys and reload";
      button.onclick = function () { session(true).catch(function () {}).then(function () { location.reload(); }); };
      box.appendChild(button);
    }
  }

  /* No cryptography here: say so (to the visitor and to the administrator), send nothing
   * of the app, and report the refusal with a fixed word for the server's log. */
  function refuse(status, failure) {
    document.title = "Refused: no secure connection over plain HTTP here";
    var page = document.createElement("div");
    function add(tag, text) { var node = document.createElement(tag); node.textContent = text; page.appendChild(node); return node; }
    add("h1", "This page cannot be opened securely here");
    add("p", "This application encrypts every exchange in the browser (htagweb parano mode). On plain HTTP to another " +
      "computer the browser withholds its own cryptography (WebCrypto), and " + (failure.code === "no-crypto"
        ? "this server has no JavaScript cryptography to use instead."
        : "the JavaScript cryptography of this server did not load intact (altered on the way, or a stale cache).") +
      " Nothing was sent. Open it over HTTPS, or use the kiosk file provided by the administrator.");
    add("h2", "For the administrator");
    var options = add("ul", "");
    [
      "Build the JavaScript crypto fallback: install Node.js (20.19 or later) and npm where htagweb is installed, reinstall " +
        "htagweb (pip install --force-reinstall htagweb, or pip install -e . in a checkout) and restart the server. Pages on " +
        "plain HTTP then encrypt with audited JavaScript: a passive observer reads nothing, an active one who rewrites pages can.",
      "Or serve the application over HTTPS (a TLS reverse proxy in front of htagweb).",
      "Or, for kiosks: python -m htagweb kiosk URL --out kiosk.html --fingerprint SHA256:... and open that file on the kiosk.",
    ].forEach(function (text) { var item = document.createElement("li"); item.textContent = text; options.appendChild(item); });
    status.replaceWith(page);
    realFetch(origin + "/_htagweb/refused", Object.assign({ method: "POST", body: failure.code, keepalive: true,
      headers: { "content-type": "text/plain" } }, NO_REFERRER)).catch(function () {});
  }

  /* Links within the pinned server load the kiosk file again, showing their path. */
  function keepLinksInKiosk() {
    window.addEventListener("click", function (event) {
      if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      var link = event.target.closest ? event.target.closest("a[href]") : null;
      if (!link || (link.target && link.target !== "_self")) return;
      var url = new URL(link.getAttribute("href"), origin + appPath + appSearch);
      if (url.origin !== origin) return;  // another site: the browser goes there itself
      event.preventDefault();
      if (url.pathname === appPath && url.search === appSearch && url.hash) location.hash = url.hash;
      else location.assign(location.pathname + "?" + KIOSK_PATH + "=" + encodeURIComponent(url.pathname + url.search) + url.hash);
    });
  }

  // --- bootstrap (§8) --------------------------------------------------------
  async function start() {
    var status = document.getElementById("htagweb-parano-status");
    try {
      await ready;
    } catch (failure) {
      refuse(status, failure);
      return;
    }
    try {
      var answer = await paranoFetch("GET", appPath + appSearch, [], null, 0, true, false);
      if (answer.failure) throw answer.failure;
      var html = await answer.response.text();
      window.WebSocket = ParanoWebSocket;
      window.EventSource = ParanoEventSource;
      document.open();
      document.write(html);
      document.close();
      if (server) keepLinksInKiosk();  // after document.open, which drops the window's listeners
    } catch (e) {
      fail(e);
      if (status) status.textContent = "Not connected.";
    }
  }

  window.htagwebParano = {
    ready: ready,
    get backend() { return backend; },
    internals: { concat: concat, u64: u64, sha256: sha256, hkdfBits: hkdfBits, importHkdf: importHkdf, transcriptHash: transcriptHash,
      verifySignature: verifySignature, sessionKeys: sessionKeys, clientKey: clientKey, serverKey: serverKey,
      sealBox: sealBox, openBox: openBox },
    renew: function () { return session(true); },
  };
  if (!CFG.test) start();
})();
