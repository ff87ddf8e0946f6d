// A second, independent gRPC client of graytune.v1, in Node.js: loads the .proto at run time,
// calls Describe and Embed (image and text) with an API key, prints what it got as JSON.
//   node describe_embed.js HOST:PORT PROTO_PATH   (API key in $GRAYTUNE_API_KEY)
// Header and input names are graytune.contract's (tests/test_contract.py checks them).
"use strict";
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [endpoint, protoPath] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoPath, { enums: String, longs: Number, oneofs: true });
const { GradientOracle } = grpc.loadPackageDefinition(definition).graytune.v1;
const client = new GradientOracle(endpoint, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.GRAYTUNE_API_KEY}`);
const deadline = () => new Date(Date.now() + 30000);

// The same pixels the Python side makes: value i of the flat tensor is sin(i) / 2.
function pixels(batch, height, width) {
  const values = new Float32Array(batch * 3 * height * width);
  for (let i = 0; i < values.length; i++) values[i] = Math.sin(i) / 2;
  return { name: "pixels", dtype: "FLOAT32", shape: [batch, 3, height, width],
           data: Buffer.from(values.buffer) };
}

function embed(header, chunks) {
  return new Promise((resolve, reject) => {
    const call = client.Embed(metadata, { deadline: deadline() });
    const parts = [];
    let shape = null;
    call.on("data", (message) => {
      if (message.chunk) {
        if (message.chunk.shape.length) shape = message.chunk.shape;
        parts.push(message.chunk.data);
      }
    });
    call.on("error", reject);
    call.on("end", () => {
      const bytes = Buffer.concat(parts);
      const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
      resolve({ shape, values: Array.from(values) });
    });
    call.write({ header });
    for (const chunk of chunks) call.write({ chunk });
    call.end();
  });
}

client.Describe({}, metadata, { deadline: deadline() }, async (err, info) => {
  if (err) { console.error(err.message); process.exit(1); }
  try {
    const image = await embed({ tower: "IMAGE" }, [pixels(2, info.image.height, info.image.width)]);
    const text = await embed({ tower: "TEXT", texts: ["a photo of the digit three.", "a cat"] }, []);
    console.log(JSON.stringify({ describe: info, image, text }));
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
  client.close();
});
