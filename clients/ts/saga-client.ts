// A TypeScript client of choreo, written the way a team in another language would: only the
// generated code in gen/ts (protoc-gen-es), @bufbuild/protobuf, @grpc/grpc-js and the NATS
// JetStream client; nothing from the Python code.
//
// It places a happy order and an out-of-stock order over gRPC and watches each to its end,
// sends a bad request and reads the field it names from the google.rpc.BadRequest detail, and
// reads each saga's events from the streams through its own durable consumers, decoding every
// body with the generated types. Every check that fails throws (exit code 1); on success it
// prints one line `SUMMARY {json}` for the caller.
//
//   npx tsx clients/ts/saga-client.ts --grpc 127.0.0.1:50051 --nats nats://127.0.0.1:4222
//   (or CHOREO_ORDER_GRPC / CHOREO_NATS_URL in the environment)
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import {
  create,
  createRegistry,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethodServerStreaming,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";

import { file_choreo_inventory_v1_events } from "../../gen/ts/shop/inventory/v1/events_pb.js";
import { file_choreo_notification_v1_events } from "../../gen/ts/shop/notification/v1/events_pb.js";
import { file_choreo_order_v1_events } from "../../gen/ts/shop/order/v1/events_pb.js";
import {
  type Order,
  OrderService,
  OrderStatus,
} from "../../gen/ts/shop/order/v1/order_service_pb.js";
import { file_choreo_payment_v1_events } from "../../gen/ts/shop/payment/v1/events_pb.js";
import { file_choreo_shipping_v1_events } from "../../gen/ts/shop/shipping/v1/events_pb.js";
import { BadRequestSchema } from "../../gen/ts/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/ts/google/rpc/status_pb.js";

// ---------------------------------------------------------------------------------------------
// gRPC with @grpc/grpc-js, (de)serialising with the generated schemas.

function methodPath(method: { name: string; parent: { typeName: string } }): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function unary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodUnary<I, O>,
  input: MessageInitShape<I>,
  timeoutMs = 10_000,
): Promise<MessageShape<O>> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      methodPath(method),
      (message: MessageShape<I>) => Buffer.from(toBinary(method.input, message)),
      (bytes: Buffer) => fromBinary(method.output, bytes),
      create(method.input, input),
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (error, response) => (error ? reject(error) : resolve(response as MessageShape<O>)),
    );
  });
}

async function* serverStream<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: DescMethodServerStreaming<I, O>,
  input: MessageInitShape<I>,
  timeoutMs: number,
): AsyncGenerator<MessageShape<O>> {
  const call = client.makeServerStreamRequest(
    methodPath(method),
    (message: MessageShape<I>) => Buffer.from(toBinary(method.input, message)),
    (bytes: Buffer) => fromBinary(method.output, bytes),
    create(method.input, input),
    new grpc.Metadata(),
    { deadline: Date.now() + timeoutMs },
  );
  for await (const response of call) {
    yield response as MessageShape<O>;
  }
}

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const FINAL = new Set([OrderStatus.SHIPPED, OrderStatus.CANCELLED]);

/** The request for a saga path, like services/workload.py's request_for. */
function placeOrderRequest(lines: { sku: string; quantity: number }[]) {
  return {
    idempotencyKey: randomUUID(),
    customerId: "cust-ts-client",
    lines,
    currencyCode: "USD",
    shippingAddress: {
      recipientName: "Grace Hopper",
      line1: "1 Compiler Way",
      city: "Arlington",
      postalCode: "22201",
      countryCode: "US",
    },
    paymentToken: "tok_visa",
  };
}

/** Places an order, follows WatchOrder to a final state, then waits for the notification. */
async function placeAndWatch(
  client: grpc.Client,
  lines: { sku: string; quantity: number }[],
): Promise<{ order: Order; statuses: string[] }> {
  const placed = await unary(client, OrderService.method.placeOrder, placeOrderRequest(lines));
  const order = placed.order;
  check(order !== undefined, "PlaceOrder returned an order");
  check(order.status === OrderStatus.PENDING, "a placed order is pending");
  check(order.correlationId === order.orderId, "the correlation id is the order id");

  const statuses: string[] = [];
  for await (const update of serverStream(
    client,
    OrderService.method.watchOrder,
    { orderId: order.orderId },
    60_000,
  )) {
    statuses.push(OrderStatus[update.order?.status ?? OrderStatus.UNSPECIFIED]);
  }
  const last = statuses.at(-1);
  check(
    last === "SHIPPED" || last === "CANCELLED",
    `WatchOrder ends in a final state: ${statuses}`,
  );

  // The stream ends at the final state; the customer is told a moment later.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const current = (await unary(client, OrderService.method.getOrder, { orderId: order.orderId }))
      .order;
    check(current !== undefined && FINAL.has(current.status), "GetOrder agrees it is final");
    if (current.customerNotified) return { order: current, statuses };
    check(Date.now() < deadline, `order ${order.orderId}: the customer was never notified`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Sends a request with a zero quantity; returns the fields the BadRequest detail names. */
async function badRequestFields(client: grpc.Client): Promise<{ code: string; fields: string[] }> {
  const request = placeOrderRequest([{ sku: "SKU-MUG", quantity: 0 }]);
  try {
    await unary(client, OrderService.method.placeOrder, request);
  } catch (error) {
    const failure = error as grpc.ServiceError;
    check(failure.code === grpc.status.INVALID_ARGUMENT, `INVALID_ARGUMENT, not ${failure.code}`);
    const [details] = failure.metadata.get("grpc-status-details-bin");
    check(details instanceof Buffer, "the grpc-status-details-bin trailer is present");
    const status = fromBinary(StatusSchema, details);
    check(status.code === grpc.status.INVALID_ARGUMENT, "google.rpc.Status has the same code");
    const fields: string[] = [];
    for (const detail of status.details) {
      const badRequest = anyUnpack(detail, BadRequestSchema);
      if (badRequest) fields.push(...badRequest.fieldViolations.map((v) => v.field));
    }
    return { code: grpc.status[failure.code], fields };
  }
  throw new Error("a request with a zero quantity was accepted");
}

// ---------------------------------------------------------------------------------------------
// Events, read as a downstream team would: a durable consumer of its own on each context's
// stream, filtered to one saga, decoded with the generated types.

const EVENT_FILES = [
  file_choreo_order_v1_events,
  file_choreo_inventory_v1_events,
  file_choreo_payment_v1_events,
  file_choreo_shipping_v1_events,
  file_choreo_notification_v1_events,
];
const EVENTS = createRegistry(...EVENT_FILES);
// One stream per bounded context, named after the package: shop.order.v1 -> SHOP_ORDER.
const STREAMS = EVENT_FILES.map((file) => `CHOREO_${file.proto.package.split(".")[1].toUpperCase()}`);

type SeenEvent = { id: string; type: string; subject: string; correlationId: string };

function decodeEvent(message: JsMsg, orderId: string): SeenEvent {
  const header = (name: string) => message.headers?.get(name) ?? "";
  const type = header("ce-type");
  const schema = EVENTS.getMessage(type);
  check(schema !== undefined, `ce-type ${type} is an event of the contracts`);
  check(header("ce-specversion") === "1.0", `${type}: CloudEvents 1.0`);
  check(header("content-type") === "application/protobuf", `${type}: a protobuf body`);
  check(message.subject === `${type}.${orderId}`, `${type}: subject ${message.subject}`);
  const event = fromBinary(schema, message.data) as unknown as Record<string, unknown>;
  if ("orderId" in event) {
    check(event.orderId === orderId, `${type}: the body's order_id is ${event.orderId}`);
  }
  return {
    id: header("ce-id"),
    type: type.split(".").at(-1) as string,
    subject: message.subject,
    correlationId: header("ce-correlationid"),
  };
}

/** Reads the saga's events until `expected` many arrived (plus a short wait for extras). */
async function sagaEvents(nc: NatsConnection, orderId: string, expected: number): Promise<SeenEvent[]> {
  const jsm: JetStreamManager = await jetstreamManager(nc);
  const js = jetstream(nc);
  const durable = (stream: string) => `ts-client-${stream.toLowerCase()}-${orderId}`.slice(0, 200);
  for (const stream of STREAMS) {
    await jsm.consumers.add(stream, {
      durable_name: durable(stream),
      filter_subject: `choreo.*.v1.*.${orderId}`,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
    });
  }
  // Delivery is at least once: a redelivered or republished event has the same ce-id.
  const byId = new Map<string, SeenEvent>();
  const readAvailable = async () => {
    for (const stream of STREAMS) {
      const consumer = await js.consumers.get(stream, durable(stream));
      const pending = (await consumer.info()).num_pending;
      if (pending === 0) continue;
      const batch = await consumer.fetch({ max_messages: pending, expires: 5_000 });
      for await (const message of batch) {
        const event = decodeEvent(message, orderId);
        byId.set(event.id, event);
        message.ack();
      }
    }
  };
  try {
    const deadline = Date.now() + 30_000;
    while (byId.size < expected && Date.now() < deadline) {
      await readAvailable();
      if (byId.size < expected) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // Anything published after the last expected event would be a duplicate or a stray step.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await readAvailable();
  } finally {
    for (const stream of STREAMS) await jsm.consumers.delete(stream, durable(stream));
  }
  return [...byId.values()];
}

// ---------------------------------------------------------------------------------------------

const PATHS = {
  happy: {
    lines: [{ sku: "SKU-MUG", quantity: 1 }],
    status: "SHIPPED",
    events: [
      "OrderCreated",
      "InventoryReserved",
      "PaymentCompleted",
      "OrderConfirmed",
      "ShipmentCreated",
      "OrderShipped",
      "InventoryShipped",
      "NotificationSent",
    ],
  },
  // SKU-RARE has 5 in stock (catalog/default.json): 6 can never be reserved.
  out_of_stock: {
    lines: [
      { sku: "SKU-PEN", quantity: 1 },
      { sku: "SKU-RARE", quantity: 6 },
    ],
    status: "CANCELLED",
    events: ["OrderCreated", "InventoryReservationFailed", "OrderCancelled", "NotificationSent"],
  },
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { grpc: { type: "string" }, nats: { type: "string" } },
  });
  const grpcAddress = values.grpc ?? process.env.CHOREO_ORDER_GRPC;
  const natsUrl = values.nats ?? process.env.CHOREO_NATS_URL;
  if (!grpcAddress || !natsUrl) {
    throw new Error("usage: saga-client --grpc HOST:PORT --nats nats://HOST:PORT");
  }

  const client = new grpc.Client(grpcAddress, grpc.credentials.createInsecure());
  const nc = await connect({ servers: natsUrl });
  const summary: Record<string, unknown> = {};
  try {
    for (const [name, path] of Object.entries(PATHS)) {
      const { order, statuses } = await placeAndWatch(client, path.lines);
      const status = OrderStatus[order.status];
      check(status === path.status, `${name}: ended ${status}, expected ${path.status}`);
      const events = await sagaEvents(nc, order.orderId, path.events.length);
      const types = events.map((event) => event.type).sort();
      check(
        JSON.stringify(types) === JSON.stringify([...path.events].sort()),
        `${name}: events ${types}, expected ${[...path.events].sort()}`,
      );
      check(
        events.every((event) => event.correlationId === order.orderId),
        `${name}: every ce-correlationid is the order id`,
      );
      console.log(`${name}: order ${order.orderId} ${statuses.join(" -> ")}; events ${types.join(", ")}`);
      summary[name] = { order_id: order.orderId, status, statuses, events: types };
    }
    summary.bad_request = await badRequestFields(client);
    console.log(`bad request: ${JSON.stringify(summary.bad_request)}`);
  } finally {
    client.close();
    await nc.close();
  }
  console.log(`SUMMARY ${JSON.stringify(summary)}`);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : error);
  process.exit(1);
});
