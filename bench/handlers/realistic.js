// A realistic request handler for the throughput benchmark (scripts/bench.py,
// "a realistic handler"): a small hand-written router over a few routes, a
// JSON request body or a query parsed, a JSON response built, and a SHA-256
// digest (crypto.subtle) of the response's bytes as its ETag. Plain Workers
// code: `isopod run`, `deno serve` and workerd run it unchanged.
//
//   POST /api/orders   {"customer": "...", "items": [{"sku", "price", "qty"}]}
//                      -> the order priced, with its id (what wrk sends:
//                         bench/handlers/realistic.lua)
//   GET  /api/users/:id?fields=name,email   -> the user's chosen fields
//   GET  /health       -> {"ok": true}

const encoder = new TextEncoder();

const users = new Map(
  Array.from({ length: 100 }, (_, i) => [
    String(i),
    { id: i, name: `user ${i}`, email: `user${i}@example.com`, plan: i % 3 ? "free" : "pro" },
  ]),
);

function hex(buffer) {
  let out = "";
  for (const byte of new Uint8Array(buffer)) out += byte.toString(16).padStart(2, "0");
  return out;
}

// The body's JSON with its SHA-256 as a strong ETag.
async function json(value, status = 200) {
  const body = encoder.encode(JSON.stringify(value));
  const digest = await crypto.subtle.digest("SHA-256", body);
  return new Response(body, {
    status,
    headers: { "content-type": "application/json", etag: `"${hex(digest)}"` },
  });
}

async function createOrder(request) {
  let order;
  try {
    order = await request.json();
  } catch {
    return json({ error: "the body is not JSON" }, 400);
  }
  if (typeof order.customer !== "string" || !Array.isArray(order.items) || order.items.length === 0) {
    return json({ error: "an order needs a customer and items" }, 422);
  }
  let total = 0;
  const lines = [];
  for (const item of order.items) {
    const qty = Number(item.qty);
    const price = Number(item.price);
    if (!item.sku || !Number.isInteger(qty) || qty <= 0 || !(price >= 0)) {
      return json({ error: `bad item ${JSON.stringify(item)}` }, 422);
    }
    const amount = Math.round(price * qty * 100) / 100;
    total += amount;
    lines.push({ sku: String(item.sku), qty, amount });
  }
  const id = hex(await crypto.subtle.digest("SHA-256", encoder.encode(order.customer + JSON.stringify(lines)))).slice(0, 16);
  return json({ id, customer: order.customer, lines, total: Math.round(total * 100) / 100, currency: "EUR" }, 201);
}

function getUser(url, id) {
  const user = users.get(id);
  if (!user) return json({ error: `no user ${id}` }, 404);
  const fields = url.searchParams.get("fields");
  if (!fields) return json(user);
  const chosen = {};
  for (const field of fields.split(",")) if (field in user) chosen[field] = user[field];
  return json(chosen);
}

// [method, pattern, handler(request, url, ...captures)]
const routes = [
  ["POST", /^\/api\/orders$/, (request) => createOrder(request)],
  ["GET", /^\/api\/users\/(\d+)$/, (request, url, id) => getUser(url, id)],
  ["GET", /^\/health$/, () => json({ ok: true })],
];

export default {
  async fetch(request) {
    const url = new URL(request.url);
    for (const [method, pattern, handle] of routes) {
      const match = pattern.exec(url.pathname);
      if (match && request.method === method) return handle(request, url, ...match.slice(1));
    }
    return json({ error: `no route for ${request.method} ${url.pathname}` }, 404);
  },
};
