// The smallest isopod app: `isopod run examples/hello.js`, then
// `curl http://127.0.0.1:8080/`.
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    return new Response(`Hello from isopod! You asked for ${url.pathname}\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
