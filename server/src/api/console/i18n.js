// Console strings in English and Simplified Chinese. Keys are stable; a
// missing key shows the English text, then the key itself.
export const strings = {
  en: {
    'app.title': 'Anxin dispatch',
    'login.title': 'Sign in', 'login.token': 'API token', 'login.submit': 'Sign in',
    'login.bad': 'That token is not valid.',
    'nav.queue': 'Queue', 'nav.staff': 'Staff', 'nav.reports': 'Reports', 'nav.carer': 'My tasks',
    'nav.signout': 'Sign out', 'nav.mute': 'Mute', 'nav.unmute': 'Unmute', 'nav.help': 'Shortcuts',
    'status.live': 'live', 'status.connecting': 'connecting…', 'status.reconnecting': 'reconnecting…',
    'queue.title': 'Open alerts', 'queue.empty': 'No open alerts.',
    'col.priority': 'Priority', 'col.kind': 'Kind', 'col.resident': 'Resident', 'col.community': 'Community',
    'col.age': 'Raised', 'col.state': 'State', 'col.who': 'With', 'col.deadline': 'Answer in', 'col.battery': 'Battery',
    'overdue': 'overdue', 'ago': '{n} ago', 'escalation': 'escalation {n}',
    'state.NEW': 'new', 'state.OFFERED': 'offered', 'state.ACKNOWLEDGED': 'acknowledged', 'state.EN_ROUTE': 'en route',
    'state.ON_SCENE': 'on scene', 'state.RESOLVED': 'resolved', 'state.CANCELLED': 'cancelled',
    'kind.SOS': 'SOS', 'kind.FALL': 'Fall', 'kind.SMOKE': 'Smoke', 'kind.GAS': 'Gas', 'kind.VITALS_CRITICAL': 'Critical vitals',
    'kind.INACTIVITY': 'Inactivity', 'kind.VITALS_WARNING': 'Vitals warning', 'kind.DEVICE_OFFLINE': 'Device offline',
    'kind.TAMPER': 'Tamper', 'kind.CANCEL': 'Cancel', 'kind.DEVICE_ONLINE': 'Device online', 'kind.LOW_BATTERY': 'Low battery',
    'step.CARER': 'carer', 'step.SUPERVISOR': 'supervisor', 'step.EMERGENCY_SERVICES': 'emergency services',
    'act.ack': 'Acknowledge', 'act.decline': 'Decline', 'act.en_route': 'En route', 'act.on_scene': 'On scene',
    'act.arrived': 'Arrived', 'act.resolve': 'Resolve', 'act.escalate': 'Escalate', 'act.assign': 'Assign',
    'act.note': 'Add note', 'act.cancel': 'Cancel alert', 'act.accept': 'Accept',
    'detail.back': '← Queue', 'detail.resident': 'Resident', 'detail.audited': 'Viewing this card is recorded in the audit log.',
    'detail.address': 'Address', 'detail.phone': 'Phone', 'detail.medical': 'Medical notes', 'detail.contacts': 'Emergency contacts',
    'detail.access': 'Access notes', 'detail.device': 'Device', 'detail.gateway': 'Gateway', 'detail.battery': 'Battery',
    'detail.timeline': 'Timeline', 'detail.actions': 'Actions', 'detail.outcome': 'Outcome', 'detail.notePlaceholder': 'What happened?',
    'detail.noResident': 'This device is not in the directory.',
    'tl.raised': 'Alert raised', 'tl.event': 'Event', 'tl.acknowledged': 'Acknowledged by {who}', 'tl.en_route': 'On the way',
    'tl.on_scene': 'On scene', 'tl.resolved': 'Resolved by {who}: {outcome}', 'tl.cancelled': 'Cancelled ({outcome})',
    'tl.offered': 'Offered to {who}', 'tl.note': 'Note by {who}',
    'outcome.attended': 'attended', 'outcome.false_alarm': 'false alarm', 'outcome.hospital': 'taken to hospital',
    'outcome.no_answer': 'no answer', 'outcome.referred': 'referred', 'outcome.other': 'other',
    'outcome.open': 'still open', 'outcome.cancelled_by_resident': 'cancelled by the resident', 'outcome.cancelled_by_staff': 'cancelled by staff',
    'staff.title': 'Staff on the board', 'staff.name': 'Name', 'staff.role': 'Role', 'staff.communities': 'Communities',
    'staff.onDuty': 'On duty', 'staff.load': 'Holding', 'staff.status': 'Status',
    'staff.busy': 'busy', 'staff.available': 'available', 'staff.off': 'off duty',
    'role.CARER': 'carer', 'role.NURSE': 'nurse', 'role.DISPATCHER': 'dispatcher', 'role.SUPERVISOR': 'supervisor', 'role.ADMIN': 'admin',
    'reports.title': 'Reports', 'reports.community': 'Community', 'reports.period': 'Period', 'reports.days': 'last {n} days',
    'reports.alerts': 'Alerts', 'reports.ack': 'Time to acknowledge', 'reports.arrive': 'Time to arrive',
    'reports.median': 'median', 'reports.p90': 'p90', 'reports.p99': 'p99', 'reports.within': 'Acknowledged within {n} s',
    'reports.byKind': 'By kind', 'reports.byOutcome': 'By outcome', 'reports.csv': 'Download CSV', 'reports.none': 'No figures.',
    'carer.offers': 'Offered to me', 'carer.mine': 'My alerts', 'carer.none': 'Nothing for you right now.',
    'help.title': 'Keyboard shortcuts', 'help.keys': 'j / k or ↓ / ↑ select · Enter open · a acknowledge · e escalate · o on scene · r resolve · n note · m mute · l language · g q queue · g s staff · Esc back · ? this help',
    'error': 'Error',
  },
  'zh-CN': {
    'app.title': '安心 调度台',
    'login.title': '登录', 'login.token': 'API 令牌', 'login.submit': '登录', 'login.bad': '令牌无效。',
    'nav.queue': '警情队列', 'nav.staff': '人员', 'nav.reports': '报表', 'nav.carer': '我的任务',
    'nav.signout': '退出', 'nav.mute': '静音', 'nav.unmute': '取消静音', 'nav.help': '快捷键',
    'status.live': '实时', 'status.connecting': '连接中…', 'status.reconnecting': '重新连接中…',
    'queue.title': '未结警情', 'queue.empty': '暂无未结警情。',
    'col.priority': '级别', 'col.kind': '类型', 'col.resident': '老人', 'col.community': '社区',
    'col.age': '发生', 'col.state': '状态', 'col.who': '处理人', 'col.deadline': '应答剩余', 'col.battery': '电量',
    'overdue': '已超时', 'ago': '{n}前', 'escalation': '升级 {n} 级',
    'state.NEW': '新警情', 'state.OFFERED': '已派单', 'state.ACKNOWLEDGED': '已接警', 'state.EN_ROUTE': '在途',
    'state.ON_SCENE': '已到场', 'state.RESOLVED': '已处置', 'state.CANCELLED': '已取消',
    'kind.SOS': '紧急呼叫', 'kind.FALL': '跌倒', 'kind.SMOKE': '烟雾', 'kind.GAS': '燃气', 'kind.VITALS_CRITICAL': '生命体征危急',
    'kind.INACTIVITY': '长时间未活动', 'kind.VITALS_WARNING': '生命体征异常', 'kind.DEVICE_OFFLINE': '设备离线',
    'kind.TAMPER': '设备被拆', 'kind.CANCEL': '取消', 'kind.DEVICE_ONLINE': '设备上线', 'kind.LOW_BATTERY': '电量低',
    'step.CARER': '护理员', 'step.SUPERVISOR': '主管', 'step.EMERGENCY_SERVICES': '急救中心',
    'act.ack': '接警', 'act.decline': '拒绝', 'act.en_route': '出发', 'act.on_scene': '到场',
    'act.arrived': '已到达', 'act.resolve': '处置完成', 'act.escalate': '升级', 'act.assign': '指派',
    'act.note': '添加备注', 'act.cancel': '取消警情', 'act.accept': '接受',
    'detail.back': '← 队列', 'detail.resident': '老人信息', 'detail.audited': '查看此信息将记入审计日志。',
    'detail.address': '地址', 'detail.phone': '电话', 'detail.medical': '病史', 'detail.contacts': '紧急联系人',
    'detail.access': '入户说明', 'detail.device': '设备', 'detail.gateway': '网关', 'detail.battery': '电量',
    'detail.timeline': '时间线', 'detail.actions': '操作', 'detail.outcome': '处置结果', 'detail.notePlaceholder': '情况说明',
    'detail.noResident': '该设备未登记。',
    'tl.raised': '产生警情', 'tl.event': '事件', 'tl.acknowledged': '{who} 接警', 'tl.en_route': '出发',
    'tl.on_scene': '到场', 'tl.resolved': '{who} 处置完成：{outcome}', 'tl.cancelled': '已取消（{outcome}）',
    'tl.offered': '派给 {who}', 'tl.note': '{who} 备注',
    'outcome.attended': '已上门处置', 'outcome.false_alarm': '误报', 'outcome.hospital': '送医',
    'outcome.no_answer': '无应答', 'outcome.referred': '转介', 'outcome.other': '其他',
    'outcome.open': '处理中', 'outcome.cancelled_by_resident': '老人取消', 'outcome.cancelled_by_staff': '工作人员取消',
    'staff.title': '值班人员', 'staff.name': '姓名', 'staff.role': '岗位', 'staff.communities': '负责社区',
    'staff.onDuty': '在班', 'staff.load': '在办', 'staff.status': '状态',
    'staff.busy': '忙碌', 'staff.available': '空闲', 'staff.off': '不在班',
    'role.CARER': '护理员', 'role.NURSE': '护士', 'role.DISPATCHER': '调度员', 'role.SUPERVISOR': '主管', 'role.ADMIN': '管理员',
    'reports.title': '报表', 'reports.community': '社区', 'reports.period': '时段', 'reports.days': '最近 {n} 天',
    'reports.alerts': '警情数', 'reports.ack': '接警用时', 'reports.arrive': '到场用时',
    'reports.median': '中位数', 'reports.p90': 'P90', 'reports.p99': 'P99', 'reports.within': '{n} 秒内接警比例',
    'reports.byKind': '按类型', 'reports.byOutcome': '按结果', 'reports.csv': '下载 CSV', 'reports.none': '暂无数据。',
    'carer.offers': '派给我的', 'carer.mine': '我在办的', 'carer.none': '暂无任务。',
    'help.title': '快捷键', 'help.keys': 'j / k 或 ↓ / ↑ 选择 · Enter 打开 · a 接警 · e 升级 · o 到场 · r 处置 · n 备注 · m 静音 · l 切换语言 · g q 队列 · g s 人员 · Esc 返回 · ? 帮助',
    'error': '错误',
  },
};

let current = localStorage.getItem('anxin-lang')
  || (navigator.language && navigator.language.toLowerCase().startsWith('zh') ? 'zh-CN' : 'en');

export const lang = () => current;
export function setLang(next) {
  current = strings[next] ? next : 'en';
  localStorage.setItem('anxin-lang', current);
  document.documentElement.lang = current;
}
export function t(key, vars = {}) {
  const text = strings[current][key] ?? strings.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => vars[name] ?? '');
}
setLang(current);
