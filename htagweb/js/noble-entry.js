/* What the parano client takes from the audited noble libraries where WebCrypto is
 * missing (plain HTTP to a non-local host name): bundled by esbuild into noble.min.js
 * when the Python package is built (setup.py), exposed as window.htagwebNoble. */
export { p256 } from "@noble/curves/nist.js";
export { gcm } from "@noble/ciphers/aes.js";
export { hkdf } from "@noble/hashes/hkdf.js";
export { sha256 } from "@noble/hashes/sha2.js";
