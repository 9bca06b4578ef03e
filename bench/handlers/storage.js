// The storage bench's handler (scripts/bench.py, "storage"): one KV or D1
// call per request, on whichever bindings the app has, or none (/plain).
//   /plain           no storage: the baseline
//   /kv/read         env.KV.get("k")
//   /kv/write        env.KV.put(a new key, "v")
//   /d1/read         a point read by primary key from 1,000 rows
//   /d1/insert       a single-row insert
//   /setup           fills KV's "k" and D1's table (once, before the load)
let written = 0;
const salt = Math.random().toString(36).slice(2);

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    switch (path) {
      case "/plain":
        return new Response("ok");
      case "/kv/read":
        return new Response(await env.KV.get("k"));
      case "/kv/write":
        await env.KV.put(`w-${salt}-${written++}`, "v");
        return new Response("ok");
      case "/d1/read": {
        const id = 1 + (written++ % 1000);
        const row = await env.DB.prepare("SELECT body FROM items WHERE id = ?").bind(id).first();
        return new Response(row.body);
      }
      case "/d1/insert":
        await env.DB.prepare("INSERT INTO log (at) VALUES (?)").bind(written++).run();
        return new Response("ok");
      case "/setup": {
        if (env.KV) await env.KV.put("k", "value");
        if (env.DB) {
          await env.DB.exec(
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT);\n" +
              "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, at INTEGER);",
          );
          const count = await env.DB.prepare("SELECT count(*) AS n FROM items").first("n");
          if (count === 0) {
            const insert = env.DB.prepare("INSERT INTO items (body) VALUES (?)");
            await env.DB.batch(Array.from({ length: 1000 }, (_, i) => insert.bind(`item ${i}`)));
          }
        }
        return new Response("ok");
      }
      default:
        return new Response("not found", { status: 404 });
    }
  },
};
