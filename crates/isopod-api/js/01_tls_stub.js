// `ext:deno_net/02_tls.js` stand-in: deno_fetch's custom HTTP client loads
// `loadTlsKeyPair` from it. isopod exposes no custom clients, so this is only
// reached by internal code paths that pass no key pair.
(function () {
  function loadTlsKeyPair() {
    throw new TypeError("custom TLS key pairs are not supported by isopod");
  }
  return { loadTlsKeyPair };
})();
