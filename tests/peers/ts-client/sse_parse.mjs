// The TypeScript SDK client's event-stream reading (TextDecoderStream, then eventsource-parser's
// EventSourceParserStream, then the events it takes as messages: no `event` or `message`), on
// bytes given by the test. stdin: a JSON array of [base64 body, one byte per chunk?]; stdout: a
// JSON array, per body, of the data of the events the client would parse as messages.
import { EventSourceParserStream } from 'eventsource-parser/stream';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (d) => { text += d; });
  process.stdin.on('end', () => resolve(text));
}));
const out = [];
for (const [b64, bytewise] of input) {
  const bytes = Buffer.from(b64, 'base64');
  const chunks = bytewise ? [...bytes].map((b) => new Uint8Array([b])) : [new Uint8Array(bytes)];
  const body = new ReadableStream({
    start(c) { for (const chunk of chunks) c.enqueue(chunk); c.close(); },
  });
  const reader = body.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream()).getReader();
  const events = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (value.data && (!value.event || value.event === 'message')) events.push(value.data);
  }
  out.push(events);
}
console.log(JSON.stringify(out));
