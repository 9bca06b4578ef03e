// A Hono app, unchanged from what runs on Workers.
import { Hono } from "hono";

const app = new Hono();

app.get("/", (c) => c.text("Hello from Hono on isopod"));
app.get("/users/:id", (c) => c.json({ id: c.req.param("id"), via: "hono" }));
app.post("/echo", async (c) => {
  const body = await c.req.json();
  return c.json({ received: body, greeting: c.env.GREETING ?? null });
});
app.notFound((c) => c.text("no such route", 404));

export default app;
