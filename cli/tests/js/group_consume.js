// One kafkajs consumer-group member: prints "PARTITION<TAB>OFFSET" per record and
// "assigned P,P..." on each group join; on SIGTERM it disconnects (commits, leaves the group).
// usage: node group_consume.js BOOTSTRAP GROUP TOPIC
const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const [bootstrap, groupId, topic] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: 'kxgw-test', brokers: [bootstrap], logLevel: logLevel.WARN });
  const consumer = kafka.consumer({ groupId, sessionTimeout: 6000, heartbeatInterval: 1000 });
  let out = [];
  const flush = () => {
    if (out.length) {
      process.stdout.write(out.join('\n') + '\n');
      out = [];
    }
  };
  const timer = setInterval(flush, 100);
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    const parts = (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b);
    flush();
    process.stdout.write('assigned ' + parts.join(',') + '\n');
  });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  await consumer.run({
    autoCommitInterval: 1000,
    eachBatch: async ({ batch }) => {
      for (const m of batch.messages) out.push(batch.partition + '\t' + m.offset);
    },
  });
  process.on('SIGTERM', async () => {
    try {
      await consumer.disconnect();
    } finally {
      clearInterval(timer);
      flush();
      process.exit(0);
    }
  });
}

main().catch((e) => {
  console.error('FAIL', e);
  process.exit(1);
});
