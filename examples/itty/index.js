// An itty-router app, unchanged from what runs on Workers.
import { AutoRouter } from "itty-router";

const router = AutoRouter();

router
  .get("/", () => "Hello from itty-router on isopod")
  .get("/items/:id", ({ params }) => ({ id: params.id, via: "itty-router" }))
  .post("/echo", async (request, env) => ({
    received: await request.json(),
    greeting: env.GREETING ?? null,
  }));

export default router;
