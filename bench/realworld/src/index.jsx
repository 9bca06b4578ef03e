// A Workers app of the size real ones have (about a megabyte bundled):
// routing (Hono), validation (zod), JWTs (jose), Markdown (marked) and
// server-rendered HTML (preact). Its top-level code builds what such apps
// build at start: schemas, a parsed document, a rendered page.
import { Hono } from "hono";
import { z } from "zod";
import * as jose from "jose";
import { marked } from "marked";
import { renderToString } from "preact-render-to-string";

const Order = z.object({
  id: z.string().uuid(),
  items: z.array(z.object({ sku: z.string().min(3), quantity: z.number().int().positive() })).min(1),
  email: z.string().email(),
});

const readme = marked.parse(
  Array.from({ length: 40 }, (_, i) => `## Section ${i}\n\nSome *text* with [a link](https://example.com/${i}).\n`).join("\n"),
);

function Page({ title, body }) {
  return (
    <html>
      <head><title>{title}</title></head>
      <body>
        <h1>{title}</h1>
        <div dangerouslySetInnerHTML={{ __html: body }} />
      </body>
    </html>
  );
}
const home = "<!doctype html>" + renderToString(<Page title="isopod" body={readme} />);

const app = new Hono();
app.get("/", (c) => c.html(home));
app.post("/orders", async (c) => {
  const parsed = Order.safeParse(await c.req.json().catch(() => null));
  return parsed.success ? c.json({ ok: true }) : c.json({ ok: false, issues: parsed.error.issues.length }, 400);
});
app.get("/token", async (c) => {
  const secret = new TextEncoder().encode(c.env.SECRET ?? "a-bench-secret-of-some-length");
  const jwt = await new jose.SignJWT({ sub: "bench" }).setProtectedHeader({ alg: "HS256" }).sign(secret);
  return c.text(jwt);
});
app.get("/md", (c) => c.html(marked.parse(c.req.query("text") ?? "# hello")));

export default app;
