// Chinese first, English switchable. Every string the page shows is here.

export type Lang = "zh" | "en";

const zh = {
  title: "济青通办 · 市民服务",
  skip: "跳到主要内容",
  signIn: "登录",
  signOut: "退出",
  signedInAs: "已登录",
  lang: "English",
  langLabel: "切换到英文",
  tabServices: "服务事项",
  tabApplications: "我的申请",
  tabConsents: "我的授权",
  tabAccess: "谁查看了我的数据",
  welcome: "登录后可办理济南、青岛两市的跨市通办事项，管理授权，并查看谁访问了您的数据。",
  servicesIntro: "跨市通办事项（27项）。选择事项，填写表单，由办理城市的部门受理。",
  handledBy: "办理城市",
  apply: "办理",
  personal: "涉及个人信息",
  timeLimit: "办结时限",
  days: "个工作日",
  materials: "所需材料",
  submit: "提交申请",
  cancel: "取消",
  required: "必填",
  example: "示例",
  submitted: "申请已提交",
  status: "状态",
  due: "办结期限",
  download: "下载电子证照",
  rejected: "不予受理",
  applicationsIntro: "您在两市提交的申请，最新的在前。",
  refresh: "刷新",
  none: "暂无",
  consentsIntro: "授权某个部门为特定目的、就您选定的事项访问您的数据（每个事项单独授权）。可随时撤回。",
  items: "授权事项",
  chooseItems: "请至少选择一个事项",
  person: "经办人",
  citizenSelf: "本人",
  yourConsent: "您的授权",
  system: "系统",
  grantee: "被授权部门（城市/部门）",
  service: "服务",
  purpose: "目的",
  expires: "有效期至",
  grant: "授权",
  revoke: "撤回",
  revoked: "已撤回",
  active: "有效",
  expired: "已过期",
  consentToken: "授权凭证（交给被授权部门）",
  accessIntro: "两市节点记录的每一次涉及您数据的访问：时间、部门与经办人、城市、事项、目的、授权与结果。",
  time: "时间",
  organisation: "部门",
  city: "城市",
  consent: "授权",
  outcome: "结果",
  allowed: "允许",
  refused: "拒绝",
  ownData: "本人",
  partial: "部分城市暂无法查询，记录可能不全",
  sessionExpired: "登录已过期，请重新登录。",
  error: "出错了",
  states: {
    STATE_RECEIVED: "已接收",
    STATE_ACCEPTED: "已受理",
    STATE_REJECTED: "不予受理",
    STATE_PROCESSING: "办理中",
    STATE_COMPLETED: "已办结",
    STATE_WITHDRAWN: "已撤回",
    STATE_UNSPECIFIED: "未知",
  } as Record<string, string>,
  cityNames: { jinan: "济南", qingdao: "青岛" } as Record<string, string>,
  purposes: {
    "case-handling": "办理业务",
    "medical-treatment": "诊疗",
    "access-log": "查询访问记录",
  } as Record<string, string>,
};

const en: typeof zh = {
  title: "Jinan–Qingdao services · Citizens",
  skip: "Skip to main content",
  signIn: "Sign in",
  signOut: "Sign out",
  signedInAs: "Signed in",
  lang: "中文",
  langLabel: "Switch to Chinese",
  tabServices: "Services",
  tabApplications: "My applications",
  tabConsents: "My consents",
  tabAccess: "Who looked at my data",
  welcome: "Sign in to use the cross-city services of Jinan and Qingdao, manage your consents and see who accessed your data.",
  servicesIntro: "The 27 cross-city services. Choose one, fill in the form; the department of the handling city takes it.",
  handledBy: "Handled by",
  apply: "Apply",
  personal: "personal data",
  timeLimit: "Time limit",
  days: "working days",
  materials: "Materials",
  submit: "Submit",
  cancel: "Cancel",
  required: "required",
  example: "e.g.",
  submitted: "Application submitted",
  status: "Status",
  due: "Due",
  download: "Download the certificate",
  rejected: "Rejected",
  applicationsIntro: "Your applications in both cities, newest first.",
  refresh: "Refresh",
  none: "None",
  consentsIntro: "Let a department access your data for one purpose, for the services you choose (each one separately). You can revoke it at any time.",
  items: "Services covered",
  chooseItems: "Choose at least one service",
  person: "Official",
  citizenSelf: "you",
  yourConsent: "your consent",
  system: "system",
  grantee: "Grantee (city/organisation)",
  service: "Service",
  purpose: "Purpose",
  expires: "Valid until",
  grant: "Grant",
  revoke: "Revoke",
  revoked: "revoked",
  active: "active",
  expired: "expired",
  consentToken: "Consent token (give it to the grantee)",
  accessIntro: "Every access to your data that the two cities' nodes recorded: time, organisation and official, city, service, purpose, consent and outcome.",
  time: "Time",
  organisation: "Organisation",
  city: "City",
  consent: "Consent",
  outcome: "Outcome",
  allowed: "allowed",
  refused: "refused",
  ownData: "you",
  partial: "Some cities did not answer; the list may be incomplete",
  sessionExpired: "Your session has expired; please sign in again.",
  error: "Error",
  states: {
    STATE_RECEIVED: "received",
    STATE_ACCEPTED: "accepted",
    STATE_REJECTED: "rejected",
    STATE_PROCESSING: "processing",
    STATE_COMPLETED: "completed",
    STATE_WITHDRAWN: "withdrawn",
    STATE_UNSPECIFIED: "unknown",
  },
  cityNames: { jinan: "Jinan", qingdao: "Qingdao" },
  purposes: {
    "case-handling": "case handling",
    "medical-treatment": "medical treatment",
    "access-log": "access log",
  },
};

let lang: Lang = "zh";

export function t(): typeof zh {
  return lang === "zh" ? zh : en;
}

export function currentLang(): Lang {
  return lang;
}

export function toggleLang(): void {
  lang = lang === "zh" ? "en" : "zh";
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}

export function cityName(c: string): string {
  return t().cityNames[c] ?? c;
}

export function purposeName(p: string): string {
  return t().purposes[p] ?? p;
}
